"""`trl-masked-sft`: `train` (like `trl sft`), `inspect` (the mask inspector) and `audit` (the pre-flight report).

    trl-masked-sft train --config recipe.yaml
    trl-masked-sft inspect --dataset_name data.jsonl --tokenizer_name_or_path ./tok --rows 3 --html masks.html
    trl-masked-sft audit --dataset_name data.jsonl --tokenizer_name_or_path ./tok --max_length 256

`train` runs unchanged under `accelerate launch -m trl_masked_sft.cli train ...`. `main` is the console script: it
reports a mistake as one `error:` line (`cli/errors.py`; `--debug` for the traceback); `run` is the same without
that boundary. Nothing heavy (torch, transformers, TRL) is imported before a command needs it, so `--help` answers at
once; `inspect` and `audit` take only the masking fields of `MaskedSFTConfig` (`MASKING_FIELDS`) as flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..logs import is_main_process
from .errors import DEBUG_ENV, EXPECTED, as_flags, pop_debug
from .errors import report as report_error
from .sources import DEMO, check_model_source, demo_tokenizer, load_rows, load_tokenizer

__all__ = ["load_rows", "main", "run"]

COMMANDS = {
    "train": "fine-tune a model (TRL's `trl sft` arguments, MaskedSFTConfig, `--config recipe.yaml`)",
    "inspect": "show which tokens of a few rows are trained, and why the others are not",
    "audit": "the pre-flight audit report of a dataset; exit code 1 when `masked_row_policy` would stop training",
}
#: The MaskedSFTConfig fields that decide what a row trains on: the only config flags of `inspect` and `audit`
#: (`train` takes them all).
MASKING_FIELDS = (
    "max_length",
    "truncation_mode",
    "completion_only_loss",
    "assistant_only_loss",
    "dataset_text_field",
    "prompt_column",
    "completion_column",
    "response_template",
    "instruction_template",
    "assistant_turns",
    "train_on_eot",
    "train_roles",
    "message_train_key",
    "message_weight_key",
    "reasoning",
    "tool_calls",
    "stop_token_ids",
    "min_completion_tokens",
    "masked_row_policy",
    "max_masked_row_fraction",
    "chat_template_path",
    "dataset_num_proc",
)
#: The flags of the command being run, for the error boundary's `--flag` wording of fix hints.
_FLAGS: set[str] = set()


@dataclass
class DataArguments:
    """Where the rows come from, for `inspect` and `audit`."""

    dataset_name: str = field(
        metadata={"help": "A dataset on the Hub, or a local .json/.jsonl/.csv/.parquet file or a folder of them."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset configuration (Hub only)."})
    dataset_train_split: str = field(
        default="train",
        metadata={
            "help": "The split to read (as `train` names it; `--dataset_split` also works).",
            "aliases": ["--dataset_split"],
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The tokenizer of the model you will train (a folder or a Hub name): token counts and masks depend "
            f"on it. Without it, the offline demo tokenizer `{DEMO}` is used, and said so on stderr."
        },
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


def _masking_arguments() -> type:
    """A dataclass of `MaskedSFTConfig`'s `MASKING_FIELDS` (same types, defaults and help), for `inspect`/`audit`."""
    import typing

    from ..config import MaskedSFTConfig

    hints = typing.get_type_hints(MaskedSFTConfig)
    fields = []
    for name in MASKING_FIELDS:
        source = MaskedSFTConfig.__dataclass_fields__[name]
        default = {"default": source.default} if source.default_factory is dataclasses.MISSING else {}
        default = default or {"default_factory": source.default_factory}
        fields.append((name, hints[name], field(**default, metadata=source.metadata)))
    return dataclasses.make_dataclass("MaskingArguments", fields)


def _parser(command: str, dataclass_types: tuple):
    from trl import TrlParser

    usage = f"trl-masked-sft {command} [--config RECIPE.yaml] [--debug] [OPTIONS]  (`--help` lists the options)"
    epilog = f"--debug (or {DEBUG_ENV}=1) shows the full traceback of an error instead of one `error:` line."
    parser = TrlParser(
        dataclass_types, prog=f"trl-masked-sft {command}", description=COMMANDS[command], usage=usage, epilog=epilog
    )
    _FLAGS.clear()
    _FLAGS.update(action.dest for action in parser._actions)
    return parser


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
        known = [option for action in parser._actions for option in action.option_strings]
        guesses = [difflib.get_close_matches(arg.split("=")[0], known, n=1) for arg in remaining if arg[:2] == "--"]
        hint = ", ".join(guess[0] for guess in guesses if guess)
        parser.error(f"unrecognized arguments: {' '.join(remaining)}" + (f" (did you mean {hint}?)" if hint else ""))
    return tuple(parsed)


def _top_help() -> str:
    lines = ["usage: trl-masked-sft {train,inspect,audit} [--help] ...", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `trl-masked-sft COMMAND --help` for the options of a command."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- commands


def _tokenizer(name: str | None, splits: dict[str, Any], chat_template_path: str | None):
    """The tokenizer `--tokenizer_name_or_path` names; none named: the demo tokenizer, said loudly on stderr."""
    if name is None:
        print(
            f"warning: no --tokenizer_name_or_path given: using the offline demo tokenizer `{DEMO}` (built from these "
            "rows), so token counts and masks say nothing about your model's tokenizer. Fix: pass "
            "--tokenizer_name_or_path with your model's folder or Hub name.",
            file=sys.stderr,
        )
    tokenizer = demo_tokenizer(splits) if name in (None, DEMO) else load_tokenizer(name)
    if chat_template_path and Path(chat_template_path).is_file():
        tokenizer.chat_template = Path(chat_template_path).read_text()  # a Jinja file, as `trl sft` takes it
    return tokenizer


def _train(argv: list[str]) -> int:
    from trl import ModelConfig, ScriptArguments, get_peft_config

    from ..config import MaskedSFTConfig
    from ..precision import has_accelerator, torch_threads
    from ..trainer import MaskedSFTTrainer

    parser = _parser("train", (ScriptArguments, MaskedSFTConfig, ModelConfig))
    script_args, training_args, model_args = _parse(parser, argv)
    if not script_args.dataset_name:
        parser.error("the following arguments are required: --dataset_name (a Hub dataset or a local file/folder)")
    if not model_args.model_name_or_path:
        parser.error(f"the following arguments are required: --model_name_or_path (or `{DEMO}` for the offline demo)")
    demo = model_args.model_name_or_path == DEMO
    if not demo:
        check_model_source(model_args.model_name_or_path)
    splits = load_rows(script_args.dataset_name, script_args.dataset_config)
    if script_args.dataset_train_split not in splits:
        parser.error(f"--dataset_train_split {script_args.dataset_train_split!r} not in the splits {sorted(splits)}")
    if demo:
        from ..tiny import build_tiny_model

        processing_class = demo_tokenizer(splits)
        model = build_tiny_model(processing_class, hidden_size=128, num_hidden_layers=2)
        if is_main_process():
            print(f"Using the offline demo model `{DEMO}`: a tiny random Llama, not a real language model.")
    else:
        model = model_args.model_name_or_path
        processing_class = load_tokenizer(model, flag="--model_name_or_path")
    if not has_accelerator():
        training_args.dataloader_pin_memory = False  # pinned memory needs an accelerator; torch warns otherwise
    eval_split = splits.get(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
    trainer = MaskedSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=splits[script_args.dataset_train_split],
        eval_dataset=eval_split,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
    )
    with torch_threads(1 if demo else None):
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    return 0


def _data_command(command: str, arguments: type, argv: list[str]) -> tuple:
    """Parse an `inspect`/`audit` command line; load the split and the tokenizer it names.

    Returns `(data_args, command_args, config, rows, tokenizer)`."""
    from ..config import MaskedSFTConfig
    from ..options import MaskingOptions
    from ..stops import read_generation_config, with_model_stops

    parser = _parser(command, (DataArguments, arguments, _masking_arguments()))
    data_args, command_args, masking = _parse(parser, argv)
    config = MaskedSFTConfig(report_to="none", **dataclasses.asdict(masking))
    splits = load_rows(data_args.dataset_name, data_args.dataset_config)
    split = data_args.dataset_train_split
    if split not in splits:
        parser.error(f"--dataset_train_split {split!r} not in the splits {sorted(splits)}")
    tokenizer = _tokenizer(data_args.tokenizer_name_or_path, splits, config.chat_template_path)
    folder = data_args.tokenizer_name_or_path
    if config.stop_token_ids is None and folder and (model_ids := read_generation_config(folder)) is not None:
        # a local model folder: its generation_config.json gives the stop set, as the trainer reads it from the model
        options = with_model_stops(tokenizer, MaskingOptions.from_args(config), model_ids)
        config.stop_token_ids = list(options.stop_token_ids) if options.stop_token_ids is not None else None
    return data_args, command_args, config, splits[split], tokenizer


def _inspect(argv: list[str]) -> int:
    from ..inspector import inspect_rows, render_html, render_terminal

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
    from ..audit_html import render_audit_html, worst_row_indices
    from ..inspector import RowMarks, inspect_rows

    counts = prepared.supervised_counts
    worst = []
    for index in worst_row_indices(counts):
        try:
            worst += inspect_rows(rows, tokenizer, config, rows=1, start=index)
        except (ValueError, TypeError) as error:  # e.g. a row that is alone refused (an empty completion)
            worst.append(RowMarks(index, problem=f"could not be inspected alone: {error}"))
    return render_audit_html(prepared.report, counts, worst)


def _audit(argv: list[str]) -> int:
    from ..pipeline import PreparationPipeline

    data_args, audit_args, config, rows, tokenizer = _data_command("audit", AuditArguments, argv)
    pipeline = PreparationPipeline.from_config(tokenizer, config)
    prepared = pipeline.prepare(rows, data_args.dataset_train_split, enforce=False)
    report = prepared.report
    print(report.summary())
    if audit_args.json_path:
        report.write_json(audit_args.json_path)
        print(f"Report written to {audit_args.json_path}")
    if audit_args.html:
        Path(audit_args.html).write_text(_audit_page(prepared, rows, tokenizer, config))
        print(f"HTML written to {audit_args.html}")
    if report.policy_error:
        print(as_flags(report.policy_error, _FLAGS), file=sys.stderr)
        return 1
    print(f"masked_row_policy={report.policy!r}: training may start.")
    return 0


def run(argv: list[str]) -> int:
    """Run one command line and return its exit code; errors propagate (`main` is the boundary that reports them)."""
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


def main(argv: list[str] | None = None) -> int:
    """The `trl-masked-sft` console script: `run`, with our errors and the predictable ones from the libraries below
    reported as one `error: <message>` line on stderr (exit code 1), not a traceback (`cli/errors.py`)."""
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    _FLAGS.clear()
    if debug:
        return run(argv)
    try:
        return run(argv)
    except EXPECTED as error:
        return report_error(error, _FLAGS)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
