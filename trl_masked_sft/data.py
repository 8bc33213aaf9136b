"""Bringing user data into a shape TRL prepares: column names, homework `[question, answer]` rows, value checks.

Every check names the row, the column, the value seen and the fix, instead of a traceback from inside datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, IterableDataset

from .errors import DatasetFormatError, DatasetTypeError

__all__ = ["coerce_dataset", "normalize_dataset", "prepare_pretokenized"]

_CONVERSATION_COLUMNS = ("messages", "conversations")


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The dataset's columns; for a streaming dataset with unknown features, the keys of its first row."""
    if dataset.column_names:
        return list(dataset.column_names)
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset), None)
        return list(first) if first else []
    return []


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _to_text(value: Any, *, row: int, column: str, dataset_name: str) -> Any:
    """A string (or a list of messages) as is; a finite number as `str(number)`; anything else raises."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return value  # conversational prompt/completion
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    fix = (
        "fill in or remove the row"
        if value is None
        else "convert it to a string, e.g. f'<answer>{round(value, 3)}</answer>' for a number"
    )
    raise DatasetTypeError(
        f"Row {row} of the {dataset_name} dataset: column `{column}` must be a string, got {_describe(value)}. "
        f"Fix: {fix}."
    )


def coerce_dataset(data: Any, *, prompt_column: str, completion_column: str, dataset_name: str) -> Any:
    """Turn a Python list of `[question, answer]` pairs or of dicts into a `datasets.Dataset`; pass others through.

    Pairs fill `prompt_column` and `completion_column`. Each row is checked here, so a bad one is reported by index
    rather than as an Arrow type error.
    """
    if data is None or isinstance(data, (Dataset, IterableDataset, dict)):
        return data
    if not isinstance(data, Sequence) or isinstance(data, str):
        return data  # SFTTrainer reports the unsupported type
    if len(data) == 0:
        raise DatasetFormatError(f"The {dataset_name} dataset is an empty list. Pass at least one row.")
    if all(isinstance(row, dict) for row in data):
        return Dataset.from_list(list(data))
    prompts, completions = [], []
    for i, row in enumerate(data):
        if not isinstance(row, (list, tuple)) or len(row) != 2:
            raise DatasetFormatError(
                f"Row {i} of the {dataset_name} dataset is {_describe(row)}; a list dataset needs every row as a "
                "`[question, answer]` pair or every row as a dict. Fix that row, or build a `datasets.Dataset`."
            )
        prompts.append(_to_text(row[0], row=i, column=prompt_column, dataset_name=dataset_name))
        completions.append(_to_text(row[1], row=i, column=completion_column, dataset_name=dataset_name))
    return Dataset.from_dict({prompt_column: prompts, completion_column: completions})


def normalize_dataset(
    dataset: Dataset | IterableDataset,
    *,
    prompt_column: str,
    completion_column: str,
    text_field: str,
    dataset_name: str,
) -> tuple[Dataset | IterableDataset, set[int]]:
    """Rename the configured prompt/completion columns to `prompt`/`completion` and check their values.

    Returns the dataset and the indices of rows whose completion is empty (they are reported by the pre-flight pass
    under `masked_row_policy`). Pre-tokenized, conversational and text datasets pass through unchanged.
    """
    columns = column_names(dataset)
    if "input_ids" in columns or any(c in columns for c in _CONVERSATION_COLUMNS):
        return dataset, set()
    has_prompt, has_completion = prompt_column in columns, completion_column in columns
    if not (has_prompt or has_completion):
        if text_field in columns:
            return dataset, set()
        raise DatasetFormatError(
            f"The {dataset_name} dataset has columns {columns}, none of which MaskedSFTTrainer can train on: it "
            f"looks for `{prompt_column}` + `{completion_column}` (`prompt_column`, `completion_column`), "
            f"`{text_field}` (`dataset_text_field`), `messages`, or pre-tokenized `input_ids`. Fix: set "
            "`prompt_column`/`completion_column` to your column names, e.g. "
            "MaskedSFTConfig(prompt_column='question', completion_column='answer')."
        )
    if not (has_prompt and has_completion):
        missing, field_name = (
            (completion_column, "completion_column") if has_prompt else (prompt_column, "prompt_column")
        )
        raise DatasetFormatError(
            f"The {dataset_name} dataset has no `{missing}` column (columns: {columns}). Fix: set `{field_name}` to "
            f"the column that holds the {'completion' if has_prompt else 'prompt'}."
        )
    renames = {old: new for old, new in ((prompt_column, "prompt"), (completion_column, "completion")) if old != new}
    for old, new in renames.items():
        if new in columns:
            raise DatasetFormatError(
                f"The {dataset_name} dataset has both `{old}` (`{'prompt' if new == 'prompt' else 'completion'}"
                f"_column`) and `{new}` columns. Fix: drop or rename `{new}`."
            )
    if renames:
        dataset = dataset.rename_columns(renames)
    if isinstance(dataset, IterableDataset):
        return dataset.map(_check_example, fn_kwargs={"dataset_name": dataset_name}), set()
    return _check_columns(dataset, dataset_name, prompt_column, completion_column)


def _check_example(example: dict, dataset_name: str) -> dict:
    """Row check for streaming datasets (no index is known; the value is named)."""
    return {
        "prompt": _to_text(example["prompt"], row=-1, column="prompt", dataset_name=dataset_name),
        "completion": _to_text(example["completion"], row=-1, column="completion", dataset_name=dataset_name),
    }


def _check_columns(
    dataset: Dataset, dataset_name: str, prompt_column: str, completion_column: str
) -> tuple[Dataset, set[int]]:
    prompts, completions = dataset["prompt"], dataset["completion"]
    converted = False
    empty: set[int] = set()
    for column, values, shown in (("prompt", prompts, prompt_column), ("completion", completions, completion_column)):
        for i, value in enumerate(values):
            if not isinstance(value, str):
                text = _to_text(value, row=i, column=shown, dataset_name=dataset_name)
                converted = converted or text is not value
            elif column == "completion" and not value.strip():
                empty.add(i)
    if empty and len(empty) == len(completions):
        raise DatasetFormatError(
            f"Every completion in the {dataset_name} dataset (`{completion_column}`) is empty, so there is nothing "
            "to train on. Fix: point `completion_column` at the column that holds the answers."
        )
    if converted:
        dataset = dataset.map(
            lambda ex: {
                "prompt": _to_text(ex["prompt"], row=-1, column="prompt", dataset_name=dataset_name),
                "completion": _to_text(ex["completion"], row=-1, column="completion", dataset_name=dataset_name),
            },
            desc=f"Writing numbers in the {dataset_name} dataset as text",
        )
    return dataset, empty


def prepare_pretokenized(
    dataset: Dataset | IterableDataset, *, dataset_name: str, completion_only: bool, ignore_index: int = -100
):
    """Check and tidy a pre-tokenized dataset before TRL sees it.

    - `labels` (and `completion_mask`, `attention_mask`) must have one entry per token: a mismatch names the row;
    - with `completion_only`, a `completion_mask` is merged into `labels` (TRL would ignore it next to `labels` and
      train on the prompt) and a `prompt_length` column masks that many leading tokens;
    - rows padded in advance are trimmed with `attention_mask`, so no compute is spent on padding.
    """
    columns = column_names(dataset)
    if "input_ids" not in columns:
        return dataset
    extra = [c for c in ("labels", "completion_mask", "attention_mask", "prompt_length") if c in columns]
    if not extra:
        return dataset

    def tidy_row(example, index):
        ids = example["input_ids"]
        if ids is None or len(ids) == 0:
            raise DatasetFormatError(
                f"Row {index} of the {dataset_name} dataset has empty `input_ids`. Remove empty rows."
            )
        ids = list(ids)
        values = {}
        for key in ("labels", "completion_mask", "attention_mask"):
            if key in example:
                v = example[key]
                if v is None or len(v) != len(ids):
                    raise DatasetFormatError(
                        f"Row {index} of the {dataset_name} dataset: `{key}` has "
                        f"{'no' if v is None else len(v)} entries but `input_ids` has {len(ids)}. Fix: build "
                        f"`{key}` from the same tokenization as `input_ids`, one entry per token."
                    )
                values[key] = list(v)
        labels = values.get("labels")
        if completion_only and "completion_mask" in values:
            base = labels if labels is not None else ids
            labels = [lab if keep else ignore_index for lab, keep in zip(base, values["completion_mask"], strict=True)]
        if completion_only and example.get("prompt_length") is not None:
            start = int(example["prompt_length"])
            base = labels if labels is not None else ids
            labels = [ignore_index] * min(start, len(base)) + list(base[start:])
        mask = values.pop("attention_mask", None)
        keep = None if mask is None or all(mask) else [i for i, m in enumerate(mask) if m]

        def trim(seq):
            return seq if keep is None else [seq[i] for i in keep]

        out = {"input_ids": trim(ids)}
        if labels is not None:
            out["labels"] = trim(labels)
        return out

    drop = [c for c in ("attention_mask", "prompt_length", "completion_mask") if c in columns]
    kwargs = {"desc": f"Checking pre-tokenized {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
    return dataset.map(tidy_row, with_indices=True, remove_columns=drop, **kwargs)
