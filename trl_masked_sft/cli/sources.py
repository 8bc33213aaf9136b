"""The data and tokenizers named on the command line: `--dataset_name`, `--tokenizer_name_or_path` and
`--model_name_or_path`, loaded or refused with a `DataSourceError` that names the flag, the value and the fix.

A library's own error underneath is quoted whole (never cut: a cut message can end mid-URL) and kept as the
`__cause__`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataSourceError
from ..logs import is_main_process

__all__ = ["DEMO", "check_model_source", "load_rows", "load_tokenizer", "demo_tokenizer"]

#: `--model_name_or_path` / `--tokenizer_name_or_path` value for the embedded offline demo model.
DEMO = "tiny-demo"
_LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
#: Files a folder written by `tokenizer.save_pretrained(...)` holds one of.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _reason(error: BaseException) -> str:
    """A library's error as `Type: message`, whole (never cut), its lines joined, without a final full stop (the
    caller's sentence goes on)."""
    return f"{type(error).__name__}: {' '.join(str(error).split()).rstrip('.')}"


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

    from ..formats import coerce_dataset

    pairs = _homework_pairs(path)
    if pairs is not None:
        # `[question, answer]` rows: a numeric answer is written `" <answer>…</answer>"`, as everywhere.
        return coerce_dataset(pairs, prompt_column="prompt", completion_column="completion", dataset_name=path.name)
    try:
        return load_dataset(_LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
    except Exception as error:  # datasets' own errors (DatasetGenerationError, ArrowInvalid, ...) name no fix
        raise DataSourceError(
            f"--dataset_name: can't read {path} as {_LOCAL_SUFFIXES[path.suffix].upper()}: "
            f"{_reason(error)}. Fix: check the file (one JSON object per line for .jsonl, the same columns in "
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
            f"{_reason(error)}. Fix: pass a local .json/.jsonl/.csv/.parquet file or "
            "folder, or check the Hub name (and your connection, or HF_DATASETS_OFFLINE)."
        ) from error


def demo_tokenizer(splits: dict[str, Any]):
    from ..tiny import build_tiny_tokenizer

    corpus = []
    for row in list(splits["train"])[:2000]:
        corpus.append(" ".join(str(v) for v in row.values() if isinstance(v, (str, int, float))))
    return build_tiny_tokenizer(corpus, vocab_size=512)


def load_tokenizer(name: str, flag: str = "--tokenizer_name_or_path"):
    """`AutoTokenizer.from_pretrained(name)`, with a missing folder, a folder with no tokenizer files, a name that is
    neither a path nor a Hub id, or an unreachable Hub reported as such, naming `flag`."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    fix = f"point it at a folder written by `tokenizer.save_pretrained(...)`, or use `{DEMO}` for the offline demo tokenizer"
    if not path.exists() and _looks_local(name):
        raise DataSourceError(f"{flag} {name!r}: no such folder (looked for {path.resolve()}). Fix: {fix}.")
    if path.is_dir() and not any((path / file).is_file() for file in _TOKENIZER_FILES):
        found = sorted(p.name for p in path.iterdir())[:12] or "nothing"
        raise DataSourceError(
            f"{flag} {name!r}: can't load a tokenizer (the folder has no tokenizer files): it holds none of "
            f"{', '.join(_TOKENIZER_FILES)} (found: {found}). Fix: save the tokenizer into it "
            f"(`tokenizer.save_pretrained({name!r})`), or {fix}."
        )
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)  # never prompts, never runs its code
    except Exception as error:  # OSError/ValueError from the hub client or a folder without tokenizer files
        if "trust_remote_code" in str(error):
            raise DataSourceError(
                f"{flag} {name!r} needs custom code to load, which this command never runs "
                "(`trust_remote_code` stays off). Fix: use a folder with a standard tokenizer (tokenizer.json), e.g. "
                "one written by `tokenizer.save_pretrained(...)` after you loaded and reviewed it yourself."
            ) from error
        where = (
            "the folder's tokenizer files can't be read" if path.is_dir() else "it is not on this machine or the Hub"
        )
        raise DataSourceError(
            f"{flag} {name!r}: can't load a tokenizer ({where}): {_reason(error)}. Fix: {fix}."
        ) from error


def check_model_source(name: str) -> None:
    """Refuse a `--model_name_or_path` that can't be a model before any library tries it: a path that does not exist
    (e.g. a typo of a local folder), a folder with no `config.json`, or a name that is not a valid Hub id."""
    path = Path(name).expanduser()
    fix = f"point it at a folder written by `model.save_pretrained(...)`, or use `{DEMO}` for the offline demo model"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataSourceError(
                f"--model_name_or_path {name!r}: the folder has no config.json, so it holds no saved model (found: "
                f"{sorted(p.name for p in path.iterdir())[:12] or 'nothing'}). Fix: {fix}."
            )
        return
    if path.exists() or _looks_local(name):
        what = "is a file, not a model folder" if path.exists() else f"no such folder (looked for {path.resolve()})"
        raise DataSourceError(f"--model_name_or_path {name!r}: {what}. Fix: {fix}.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise DataSourceError(
            f"--model_name_or_path {name!r} is neither a folder on this machine nor a valid Hub name: "
            f"{_reason(error)}. Fix: check the path, or write the Hub name as 'owner/name'."
        ) from error
