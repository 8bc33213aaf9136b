"""`trl-masked-sft`: `train` (like `trl sft`), `inspect` (the mask inspector) and `audit` (the pre-flight report).

    trl-masked-sft train --config recipe.yaml
    trl-masked-sft inspect --dataset_name data.jsonl --tokenizer_name_or_path ./tok --rows 3 --html masks.html
    trl-masked-sft audit --dataset_name data.jsonl --tokenizer_name_or_path ./tok --max_length 256

`train` runs unchanged under `accelerate launch -m trl_masked_sft.cli train ...`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataSourceError
from .logs import is_main_process

__all__ = ["main"]

COMMANDS = {
    "train": "fine-tune a model (TRL's `trl sft` arguments, MaskedSFTConfig, `--config recipe.yaml`)",
    "inspect": "show which tokens of a few rows are trained, and why the others are not",
    "audit": "the pre-flight audit report of a dataset; exit code 1 when `masked_row_policy` would stop training",
}
#: `--model_name_or_path` / `--tokenizer_name_or_path` value for the embedded offline demo model.
DEMO = "tiny-demo"
_LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DataArguments:
    """Where the rows come from, for `inspect` and `audit`."""

    dataset_name: str = field(
        metadata={"help": "A dataset on the Hub, or a local .json/.jsonl/.csv/.parquet file or a folder of them."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset configuration (Hub only)."})
    dataset_split: str = field(default="train", metadata={"help": "The split to read."})
    tokenizer_name_or_path: str = field(
        default=DEMO, metadata={"help": f"Tokenizer name or path; `{DEMO}` builds the offline demo tokenizer."}
    )


@dataclass
class InspectArguments:
    rows: int = field(default=3, metadata={"help": "How many rows to show."})
    start: int = field(default=0, metadata={"help": "Index of the first row shown."})
    html: str | None = field(default=None, metadata={"help": "Also write a self-contained HTML page to this path."})
    color: str = field(
        default="auto", metadata={"help": "Colour the terminal output.", "choices": ["auto", "always", "never"]}
    )


@dataclass
class AuditArguments:
    json_path: str | None = field(default=None, metadata={"help": "Also write the report as JSON to this path."})
    html: str | None = field(
        default=None,
        metadata={"help": "Also write a self-contained HTML page (numbers, histogram, worst rows) to this path."},
    )


def _parser(command: str, dataclass_types: tuple):
    from trl import TrlParser

    return TrlParser(dataclass_types, prog=f"trl-masked-sft {command}", description=COMMANDS[command])


def _check_recipe(parser, argv: list[str]) -> None:
    """Read the `--config` YAML recipe safely before TRL's parser does, so a bad one is an argparse error (exit 2)
    naming the file and the fix: missing, not YAML, not a mapping, or holding a tag such as `!!python/object`
    (`yaml.safe_load` never builds Python objects from a recipe)."""
    if "--config" not in argv:
        return
    index = argv.index("--config")
    if index + 1 >= len(argv):
        parser.error("argument --config: expected one argument (the path of a YAML recipe)")
    import yaml

    path = Path(argv[index + 1])
    if not path.is_file():
        parser.error(
            f"--config {str(path)!r}: no such file (looked in {Path.cwd()}). Fix: pass the path of a YAML recipe, "
            "e.g. examples/homework_recipe.yaml."
        )
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as error:
        where = f"line {error.problem_mark.line + 1}" if error.problem_mark else "somewhere"
        tag = (error.problem or "").rsplit("tag ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
        parser.error(
            f"--config {str(path)!r}, {where}: the YAML tag {tag} is refused; recipes are loaded with "
            "yaml.safe_load, which builds only plain values (strings, numbers, lists, mappings), never Python "
            "objects. Fix: write that value as a plain string or number."
        )
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        parser.error(f"--config {str(path)!r} is not valid YAML: {error}. Fix: correct the file.")
    if recipe is None:
        parser.error(f"--config {str(path)!r} is empty. Fix: write `option: value` lines, one per option.")
    if not isinstance(recipe, dict):
        parser.error(
            f"--config {str(path)!r} must be a YAML mapping of options (`option: value` lines), got a "
            f"{type(recipe).__name__}."
        )


def _parse(parser, argv: list[str]) -> tuple:
    """Parse `argv` (and `--config` YAML); unknown flags are an argparse error (exit 2), not a traceback."""
    _check_recipe(parser, argv)
    *parsed, remaining = parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


def _top_help() -> str:
    lines = ["usage: trl-masked-sft {train,inspect,audit} [--help] ...", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `trl-masked-sft COMMAND --help` for the options of a command."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- data


def _homework_pairs(path: Path) -> list | None:
    """The rows of a homework-style JSON file (a list of `[question, number]`), else `None`."""
    if path.suffix != ".json":
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(rows, list) and rows and all(isinstance(r, list) and len(r) == 2 for r in rows):
        return rows
    return None


def _load_split_file(path: Path):
    from datasets import load_dataset

    from .formats import coerce_dataset

    pairs = _homework_pairs(path)
    if pairs is not None:
        # `[question, answer]` rows: a numeric answer is written `" <answer>…</answer>"`, as everywhere.
        return coerce_dataset(pairs, prompt_column="prompt", completion_column="completion", dataset_name=path.name)
    try:
        return load_dataset(_LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
    except Exception as error:  # datasets' own errors (DatasetGenerationError, ArrowInvalid, ...) name no fix
        raise DataSourceError(
            f"--dataset_name: can't read {path} as {_LOCAL_SUFFIXES[path.suffix].upper()}: {type(error).__name__}: "
            f"{str(error)[:300]}. Fix: check the file (one JSON object per line for .jsonl, the same columns in "
            "every row), or convert it to another of .json/.jsonl/.csv/.parquet."
        ) from error


#: Split names a local folder's files may use for evaluation data, and the `test` split they stand in for.
_EVAL_ALIASES = ("validation", "valid", "val", "dev", "eval")


def _looks_local(name: str) -> bool:
    """A name that can only be a local path: it starts like one or ends in a data-file suffix."""
    return name.startswith((".", "/", "~")) or Path(name).suffix in _LOCAL_SUFFIXES or name.endswith("/")


def load_rows(name: str, config: str | None = None) -> dict[str, Any]:
    """Splits of a dataset: a Hub name, a local file (one `train` split) or a folder of `train.*`/`valid.*`/`test.*`.

    Each file of a folder is its own split, named after the file (`valid.jsonl` → `valid`); when the folder has no
    `test` file, the first of `validation`/`valid`/`val`/`dev`/`eval` also answers to `test` (TRL's
    `--dataset_test_split` default), said on stdout. Two files for one split are refused. A JSON file holding
    `[question, number]` rows (the homework's format) becomes prompt/completion rows with the answer written as
    `<answer>...</answer>`.
    """
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in _LOCAL_SUFFIXES:
            raise DataSourceError(
                f"--dataset_name {name!r} is a file of an unsupported type ({path.suffix or 'no suffix'}). Fix: use "
                f"one of {', '.join(sorted(_LOCAL_SUFFIXES))}."
            )
        return {"train": _load_split_file(path)}
    if path.is_dir():
        files: dict[str, Path] = {}
        for file in sorted(path.iterdir()):
            if file.suffix in _LOCAL_SUFFIXES:
                if file.stem in files:
                    raise DataSourceError(
                        f"--dataset_name folder {name!r} has two files for the split {file.stem!r}: "
                        f"{files[file.stem].name} and {file.name}. Fix: keep one of them (or rename the other)."
                    )
                files[file.stem] = file
        if "train" not in files:
            raise DataSourceError(
                f"--dataset_name folder {name!r} has no train.json/.jsonl/.csv/.parquet file (found: "
                f"{sorted(f.name for f in files.values()) or 'none'}). Fix: name the training file train.<suffix>."
            )
        splits = {split: _load_split_file(file) for split, file in files.items()}
        alias = next((a for a in _EVAL_ALIASES if a in splits), None)
        if "test" not in splits and alias is not None:
            splits["test"] = splits[alias]
            if is_main_process():  # once per run under `accelerate launch`
                print(f"Using {files[alias].name} as the `test` split (`--dataset_test_split test`) and as {alias!r}.")
        return splits
    if _looks_local(name):
        raise DataSourceError(
            f"--dataset_name {name!r}: no such file or folder (looked for {path.resolve()}). Fix: check the path; "
            "a Hub dataset is named 'owner/name'."
        )
    from datasets import load_dataset

    try:
        return dict(load_dataset(name, name=config))
    except Exception as error:  # offline, unknown name, missing config: the hub client's error names no fix
        raise DataSourceError(
            f"--dataset_name {name!r} is not a local file or folder, and loading it from the Hub failed: "
            f"{type(error).__name__}: {str(error)[:300]}. Fix: pass a local .json/.jsonl/.csv/.parquet file or "
            "folder, or check the Hub name (and your connection, or HF_DATASETS_OFFLINE)."
        ) from error


def _demo_tokenizer(splits: dict[str, Any]):
    from .tiny import build_tiny_tokenizer

    corpus = []
    for row in list(splits["train"])[:2000]:
        corpus.append(" ".join(str(v) for v in row.values() if isinstance(v, (str, int, float))))
    return build_tiny_tokenizer(corpus, vocab_size=512)


def _load_tokenizer(name: str):
    """`AutoTokenizer.from_pretrained(name)`, with a missing folder or an unreachable Hub name reported as such."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    if not path.exists() and _looks_local(name):
        raise DataSourceError(
            f"--tokenizer_name_or_path {name!r}: no such folder (looked for {path.resolve()}). Fix: point it at a "
            f"folder written by `tokenizer.save_pretrained(...)`, or use `{DEMO}` for the offline demo tokenizer."
        )
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)  # never prompts, never runs its code
    except Exception as error:  # OSError/ValueError from the hub client or a folder without tokenizer files
        if "trust_remote_code" in str(error):
            raise DataSourceError(
                f"--tokenizer_name_or_path {name!r} needs custom code to load, which this command never runs "
                "(`trust_remote_code` stays off). Fix: use a folder with a standard tokenizer (tokenizer.json), e.g. "
                "one written by `tokenizer.save_pretrained(...)` after you loaded and reviewed it yourself."
            ) from error
        where = "the folder has no tokenizer files" if path.is_dir() else "it is not on this machine or the Hub"
        raise DataSourceError(
            f"--tokenizer_name_or_path {name!r}: can't load a tokenizer ({where}): {type(error).__name__}: "
            f"{str(error)[:200]}. Fix: point it at a folder written by `tokenizer.save_pretrained(...)`, or use "
            f"`{DEMO}` for the offline demo tokenizer."
        ) from error


def _tokenizer(name: str, splits: dict[str, Any], chat_template_path: str | None):
    if name == DEMO:
        tokenizer = _demo_tokenizer(splits)
    else:
        tokenizer = _load_tokenizer(name)
    if chat_template_path and Path(chat_template_path).is_file():
        tokenizer.chat_template = Path(chat_template_path).read_text()  # a Jinja file, as `trl sft` takes it
    return tokenizer


# ---------------------------------------------------------------------------------------------------- commands


def _train(argv: list[str]) -> int:
    from trl import ModelConfig, ScriptArguments, get_peft_config

    from .config import MaskedSFTConfig
    from .trainer import MaskedSFTTrainer

    parser = _parser("train", (ScriptArguments, MaskedSFTConfig, ModelConfig))
    script_args, training_args, model_args = _parse(parser, argv)
    if not script_args.dataset_name:
        parser.error("the following arguments are required: --dataset_name (a Hub dataset or a local file/folder)")
    if not model_args.model_name_or_path:
        parser.error(f"the following arguments are required: --model_name_or_path (or `{DEMO}` for the offline demo)")
    splits = load_rows(script_args.dataset_name, script_args.dataset_config)
    if script_args.dataset_train_split not in splits:
        parser.error(f"--dataset_train_split {script_args.dataset_train_split!r} not in the splits {sorted(splits)}")
    if model_args.model_name_or_path == DEMO:
        from .tiny import build_tiny_model

        processing_class = _demo_tokenizer(splits)
        model = build_tiny_model(processing_class, hidden_size=128, num_hidden_layers=2)
        if is_main_process():
            print(f"Using the offline demo model `{DEMO}`: a tiny random Llama, not a real language model.")
    else:
        model, processing_class = model_args.model_name_or_path, None
    eval_split = splits.get(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
    trainer = MaskedSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=splits[script_args.dataset_train_split],
        eval_dataset=eval_split,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    return 0


def _data_command(command: str, arguments: type, argv: list[str]) -> tuple:
    """Parse an `inspect`/`audit` command line; load the split and the tokenizer it names.

    Returns `(data_args, command_args, config, rows, tokenizer)`."""
    from .config import MaskedSFTConfig

    parser = _parser(command, (DataArguments, arguments, MaskedSFTConfig))
    data_args, command_args, config = _parse(parser, argv)
    splits = load_rows(data_args.dataset_name, data_args.dataset_config)
    if data_args.dataset_split not in splits:
        parser.error(f"--dataset_split {data_args.dataset_split!r} not in the splits {sorted(splits)}")
    tokenizer = _tokenizer(data_args.tokenizer_name_or_path, splits, config.chat_template_path)
    return data_args, command_args, config, splits[data_args.dataset_split], tokenizer


def _inspect(argv: list[str]) -> int:
    from .inspector import inspect_rows, render_html, render_terminal

    data_args, inspect_args, config, rows, tokenizer = _data_command("inspect", InspectArguments, argv)
    rows = inspect_rows(rows, tokenizer, config, rows=inspect_args.rows, start=inspect_args.start)
    color = {"always": True, "never": False}.get(inspect_args.color)
    print(render_terminal(rows, color=color))
    if inspect_args.html:
        Path(inspect_args.html).write_text(render_html(rows, title=f"Masks of {data_args.dataset_name}"))
        print(f"HTML written to {inspect_args.html}")
    return 0


def _audit_page(prepared, rows, tokenizer, config) -> str:
    """The audit page: per-row supervised counts of the prepared rows, and the masks of the five worst rows."""
    from .audit_html import render_audit_html, worst_row_indices
    from .inspector import RowMarks, inspect_rows

    counts = prepared.supervised_counts
    worst = []
    for index in worst_row_indices(counts):
        try:
            worst += inspect_rows(rows, tokenizer, config, rows=1, start=index)
        except (ValueError, TypeError) as error:  # e.g. a row that is alone refused (an empty completion)
            worst.append(RowMarks(index, problem=f"could not be inspected alone: {error}"))
    return render_audit_html(prepared.report, counts, worst)


def _audit(argv: list[str]) -> int:
    from .pipeline import PreparationPipeline

    data_args, audit_args, config, rows, tokenizer = _data_command("audit", AuditArguments, argv)
    pipeline = PreparationPipeline.from_config(tokenizer, config)
    prepared = pipeline.prepare(rows, data_args.dataset_split, enforce=False)
    report = prepared.report
    print(report.summary())
    if audit_args.json_path:
        report.write_json(audit_args.json_path)
        print(f"Report written to {audit_args.json_path}")
    if audit_args.html:
        Path(audit_args.html).write_text(_audit_page(prepared, rows, tokenizer, config))
        print(f"HTML written to {audit_args.html}")
    if report.policy_error:
        print(report.policy_error, file=sys.stderr)
        return 1
    print(f"masked_row_policy={report.policy!r}: training may start.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    handlers = {"train": _train, "inspect": _inspect, "audit": _audit}
    if command not in handlers:
        print(_top_help().splitlines()[0], file=sys.stderr)
        print(
            f"trl-masked-sft: error: argument command: invalid choice: {command!r} (choose from "
            f"{', '.join(repr(c) for c in handlers)})",
            file=sys.stderr,
        )
        return 2
    return handlers[command](rest)


if __name__ == "__main__":
    sys.exit(main())
