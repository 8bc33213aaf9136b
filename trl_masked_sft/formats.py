"""The forms rows come in besides a `datasets.Dataset`, turned into one: Python lists of `[question, answer]` pairs or
of dicts (`coerce_dataset`), a `formatting_func`'s texts (`apply_formatting`), and pre-tokenized rows tidied for the
labels (`clean_pretokenized`). The layout of the result is decided in `layout`, its values checked in `row_checks`.

Every check names the row, the column, the value seen and the fix. `[question, answer]` rows become prompt/completion
rows, a numeric answer written `" <answer>{answer}</answer>"` wherever they enter (trainer, audit, inspector, CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from .errors import DatasetFormatError, DatasetTypeError
from .hf_compat import column_names, first_row, map_rows
from .masking import clean_row
from .row_checks import check_messages, check_token_row, describe, find_unencodable, is_number, to_text

__all__ = [
    "apply_formatting",
    "clean_pretokenized",
    "coerce_dataset",
    "coerce_datasets",
    "format_answer",
]

# ---------------------------------------------------------------------------------------------------- Python rows


def format_answer(answer: float) -> str:
    """The answer text of a numeric `[question, answer]` row: `<answer>{round(answer, 3)}</answer>`."""
    return f"<answer>{round(float(answer), 3)}</answer>"


def coerce_datasets(train: Any, evaluation: Any, options: Any) -> tuple[Any, Any]:
    """`coerce_dataset` on a trainer's train and eval datasets (a dict of eval datasets too), with `options`'s
    prompt and completion columns."""
    columns = {"prompt_column": options.prompt_column, "completion_column": options.completion_column}
    if isinstance(evaluation, dict):
        evaluation = {k: coerce_dataset(v, dataset_name=k, **columns) for k, v in evaluation.items()}
    else:
        evaluation = coerce_dataset(evaluation, dataset_name="eval", **columns)
    return coerce_dataset(train, dataset_name="train", **columns), evaluation


def coerce_dataset(data: Any, *, prompt_column: str, completion_column: str, dataset_name: str) -> Any:
    """Turn a Python list of `[question, answer]` pairs or of dicts into a `datasets.Dataset`; pass others through.

    Pairs fill `prompt_column` and `completion_column`; a numeric answer is written `" <answer>{answer}</answer>"`
    (`format_answer`, after a space so that the question tokenizes the same alone and followed by its answer), a
    string answer as given. Each row is checked here, so a bad one is reported by index, not as an Arrow error.
    """
    if isinstance(data, (DatasetDict, IterableDatasetDict)) or (
        isinstance(data, dict) and data and all(isinstance(v, (Dataset, IterableDataset)) for v in data.values())
    ):
        raise DatasetFormatError(
            f"The {dataset_name} dataset is a {type(data).__name__} with splits {list(data)}. Fix: pass one split, "
            "e.g. `dataset['train']`."
        )
    if isinstance(data, Dataset) and data.num_rows == 0 or isinstance(data, IterableDataset) and not first_row(data):
        raise DatasetFormatError(
            f"The {dataset_name} dataset has no rows. Fix: check the file, split or filter that built it; training "
            "needs at least one row."
        )
    if data is None or isinstance(data, (Dataset, IterableDataset)):
        return data
    if isinstance(data, (dict, str, bytes)) or not isinstance(data, Sequence):
        raise DatasetTypeError(f"The {dataset_name} dataset is {describe(data)}. Fix: {dataset_fix(data)}.")
    if len(data) == 0:
        raise DatasetFormatError(f"The {dataset_name} dataset is an empty list. Fix: pass at least one row.")
    if all(isinstance(row, dict) for row in data):
        rows = check_list_rows(data, dataset_name, (prompt_column, completion_column, "text"))
        return build_rows(lambda: Dataset.from_list(rows), rows, dataset_name)
    prompts, completions = [], []
    for i, row in enumerate(data):
        if not isinstance(row, (list, tuple)) or len(row) != 2:
            raise DatasetFormatError(
                f"Row {i} of the {dataset_name} dataset is {describe(row)}; a list dataset needs every row as a "
                "`[question, answer]` pair or every row as a dict. Fix: rewrite that row, or build a `datasets.Dataset`."
            )
        prompts.append(to_text(row[0], row=i, column=prompt_column, dataset_name=dataset_name))
        answer = row[1]
        completion = " " + format_answer(answer) if is_number(answer) else answer
        completions.append(to_text(completion, row=i, column=completion_column, dataset_name=dataset_name))
    columns = {prompt_column: prompts, completion_column: completions}
    rows = [{prompt_column: p, completion_column: c} for p, c in zip(prompts, completions, strict=True)]
    return build_rows(lambda: Dataset.from_dict(columns), rows, dataset_name)


def apply_formatting(dataset: Dataset | IterableDataset, formatting_func, dataset_name: str):
    """A `text` column from `formatting_func`, called per row or, for a batched function, per batch.

    Scripts written for TRL 0.15-0.19 often pass a *batched* function (it takes a dict of lists and returns a list of
    texts); TRL detected those, so this does too: the function is tried on a batch of one row first, and counts as
    batched when it returns a list of one string. Called on a single row, such a function would index into strings.
    """
    probe = first_row(dataset) or {}
    batched = False
    try:
        out = formatting_func({key: [value] for key, value in probe.items()})
        batched = isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    except Exception:  # a per-row function may fail on lists; its texts are checked like any text column
        batched = False
    kwargs = (
        {"desc": f"Applying formatting function to {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
    )

    def call(rows, indices):
        try:
            return {"text": formatting_func(rows)}
        except Exception as error:  # the user's function: name the row instead of a traceback from `datasets`
            where = f"Row {indices[0]}" if not batched else f"The batch of rows {indices[0]}-{indices[-1]}"
            raise DatasetFormatError(
                f"{where} of the {dataset_name} dataset: `formatting_func` raised {type(error).__name__}: {error}. "
                "Fix: make it handle that row (it gets one row as a dict, or a batch as a dict of lists), or clean "
                "the row first."
            ) from error

    if batched:
        mapped = dataset.map(call, batched=True, with_indices=True, **kwargs)
    else:
        mapped = dataset.map(lambda example, index: call(example, [index]), with_indices=True, **kwargs)
    return mapped.select_columns(["text"]) if isinstance(mapped, Dataset) else mapped


def _kind(value: Any) -> str | None:
    """The kind Arrow stores a value as (None for a null, which any column takes)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def check_list_rows(rows: Sequence[dict], dataset_name: str, text_columns: Sequence[str]) -> list[dict]:
    """A list of dict rows that `Dataset.from_list` stores without losing or refusing a value.

    `from_list` takes its columns from the first row (a key missing there is dropped from every row) and fails inside
    Arrow on a column mixing kinds (a string here, a list there). Both raise here naming the row. Numbers in the
    text columns are written as strings, as the prompt/completion check would.
    """
    keys: dict[str, int] = {}
    for i, row in enumerate(rows):
        for key in row:
            keys.setdefault(key, i)
    kinds: dict[str, tuple[str, int]] = {}
    converted = []
    for i, row in enumerate(rows):
        missing = [key for key in keys if key not in row]
        if missing:
            key = missing[0]
            raise DatasetFormatError(
                f"Row {i} of the {dataset_name} dataset has no `{key}` key, which row {keys[key]} has; a list of "
                f"dicts needs the same keys in every row (a key missing from row 0 would be dropped from all rows). "
                f"Fix: give row {i} a `{key}` (None for a missing value), or remove the row."
            )
        row = {
            k: to_text(v, row=i, column=k, dataset_name=dataset_name)
            if k in text_columns and _kind(v) == "number"
            else v
            for k, v in row.items()
        }
        for key, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = kinds.setdefault(key, (kind, i))
            if seen[0] != kind:
                raise DatasetTypeError(
                    f"Row {i} of the {dataset_name} dataset: `{key}` is {describe(value)}, but row {seen[1]} holds "
                    f"a {seen[0]}; a column holds one kind of value. Fix: convert row {i}'s `{key}` to a {seen[0]}, "
                    "or remove the row."
                )
        converted.append(row)
    return converted


def build_rows(build, rows: list[dict], dataset_name: str):
    """`build()` (e.g. `Dataset.from_list`), with a value Arrow can't store reported by row: text that is not valid
    Unicode, or a conversation whose messages mix kinds."""
    try:
        return build()
    except (UnicodeEncodeError, ValueError, TypeError) as error:
        for i, row in enumerate(rows):
            bad = find_unencodable(list(row.values()))
            if bad is not None:
                column = list(row)[bad[0]]
                raise DatasetTypeError(
                    f"Row {i} of the {dataset_name} dataset: `{column}` is not valid Unicode (a lone surrogate at "
                    f"character {bad[1]}, as bytes decoded with errors='surrogateescape' leave). Fix: decode the "
                    "source with errors='replace', or remove the row."
                ) from error
        for key in rows[0] if rows else ():  # a conversation whose messages mix kinds: name the row
            if any(isinstance(row.get(key), list) and row[key] and isinstance(row[key][0], dict) for row in rows):
                check_messages([row.get(key) for row in rows], dataset_name, column=key)
        raise DatasetTypeError(
            f"The {dataset_name} dataset's rows can't be stored as a dataset: {error}. Fix: give each column one "
            "kind of value (strings, numbers or lists), or build a `datasets.Dataset` yourself."
        ) from error


def dataset_fix(data: Any) -> str:
    if isinstance(data, dict):
        return "a dict of columns becomes a dataset with `datasets.Dataset.from_dict(data)`"
    if isinstance(data, (str, bytes)):
        return "load the file first, e.g. `datasets.load_dataset('json', data_files=path, split='train')`"
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return "convert the DataFrame with `datasets.Dataset.from_pandas(df)`"
    if hasattr(data, "__iter__"):
        return "pass `list(rows)`, or `datasets.IterableDataset.from_generator(...)` to stream"
    return "pass a `datasets.Dataset`, an `IterableDataset`, or a list of dicts or `[question, answer]` pairs"


def clean_pretokenized(dataset: Any, dataset_name: str, completion_only: bool, num_proc: int | None) -> Any:
    """Pre-tokenized rows: lengths checked, padding trimmed, `completion_mask`/`prompt_length` merged into the
    labels (TRL would ignore them next to `labels` and train on the prompt), labels = ids where none are given."""
    typed = isinstance(dataset, Dataset)  # its features were checked: flat int lists

    def tidy(example, index):
        check_token_row(example, index, dataset_name, typed=typed)
        ids, labels = clean_row(example, row=f"{index} of the {dataset_name} dataset", completion_only=completion_only)
        return {"input_ids": ids, "labels": labels if labels is not None else list(ids)}

    masks = ("attention_mask", "prompt_length", "completion_mask", "assistant_masks")
    drop = [c for c in masks if c in column_names(dataset)]
    return map_rows(
        dataset,
        tidy,
        desc=f"Checking pre-tokenized {dataset_name} dataset",
        columns=["input_ids", "labels", *masks],
        remove_columns=drop,
        num_proc=num_proc,
    )
