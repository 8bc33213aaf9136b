"""Bringing user data into a shape TRL prepares: column names, homework `[question, answer]` rows, value checks.

Every check names the row, the column, the value seen and the fix, instead of a traceback from inside datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from .audit import REASON
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
    if isinstance(data, (DatasetDict, IterableDatasetDict)):
        raise DatasetFormatError(
            f"The {dataset_name} dataset is a {type(data).__name__} with splits {list(data)}. Fix: pass one split, "
            "e.g. `dataset['train']`."
        )
    if isinstance(data, Dataset) and data.num_rows == 0:
        raise DatasetFormatError(
            f"The {dataset_name} dataset has no rows. Fix: check the file, split or filter that built it; training "
            "needs at least one row."
        )
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
        completion = _to_text(row[1], row=i, column=completion_column, dataset_name=dataset_name)
        if isinstance(row[1], (int, float)):  # the homework's text is f"{question} {answer}": a space, then the number
            completion = " " + completion
        completions.append(completion)
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
    if "input_ids" in columns:
        return dataset, set()
    if any(c in columns for c in _CONVERSATION_COLUMNS):
        if "messages" in columns and isinstance(dataset, Dataset):
            _check_messages(dataset["messages"], dataset_name)
        return dataset, set()
    has_prompt, has_completion = prompt_column in columns, completion_column in columns
    if not (has_prompt or has_completion):
        if text_field in columns:
            if isinstance(dataset, Dataset) and not _all_strings(dataset, text_field):
                _check_text(dataset[text_field], text_field, dataset_name)
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


def _all_strings(dataset: Dataset, column: str) -> bool:
    """A string column without nulls, read from the Arrow metadata (no pass over the rows)."""
    feature = dataset.features.get(column)
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        return False
    return dataset.data.column(column).null_count == 0


def _check_text(values, text_field: str, dataset_name: str) -> None:
    """Every text row is a string (TRL would fail inside tokenization on None or a number)."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DatasetTypeError(
                f"Row {i} of the {dataset_name} dataset: column `{text_field}` (`dataset_text_field`, or the output "
                f"of `formatting_func`) must be a string, got {_describe(value)}. Fix: fill in or remove the row, or "
                "make `formatting_func` return a string for every row."
            )


def _check_messages(conversations, dataset_name: str) -> None:
    """Every conversation is a list of messages with a `role` and a string `content` (None only with tool calls)."""
    for i, messages in enumerate(conversations):
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DatasetTypeError(
                f"Row {i} of the {dataset_name} dataset: `messages` must be a list of {{'role', 'content'}} dicts, "
                f"got {_describe(messages)}. Fix: write each row as [{{'role': 'user', 'content': ...}}, ...]."
            )
        for j, message in enumerate(messages):
            role = message.get("role")
            if not isinstance(role, str) or not role:
                raise DatasetFormatError(
                    f"Row {i} of the {dataset_name} dataset: message {j} has no `role` (got {role!r}). Fix: give every "
                    "message a role: 'system', 'user', 'assistant' or 'tool'."
                )
            content = message.get("content")
            if not isinstance(content, (str, list)) and not (content is None and message.get("tool_calls")):
                raise DatasetTypeError(
                    f"Row {i} of the {dataset_name} dataset: message {j} (role {role!r}) has `content` "
                    f"{_describe(content)}; it must be a string. Fix: fill in the content, or remove the message or "
                    "the row."
                )


def _check_example(example: dict, dataset_name: str) -> dict:
    """Row check for streaming datasets (no index is known; the value is named). An empty completion is marked for
    the pre-flight check, which applies `masked_row_policy` as it reads the rows."""
    completion = _to_text(example["completion"], row=-1, column="completion", dataset_name=dataset_name)
    return {
        "prompt": _to_text(example["prompt"], row=-1, column="prompt", dataset_name=dataset_name),
        "completion": completion,
        REASON: "empty completion" if isinstance(completion, str) and not completion.strip() else "",
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
    _check_integer_columns(dataset, dataset_name)
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
        bad = next((v for v in labels or () if v < 0 and v != ignore_index), None)
        if bad is not None:
            raise DatasetFormatError(
                f"Row {index} of the {dataset_name} dataset: `labels` holds {bad}; only {ignore_index} marks a position "
                f"that is not trained, and token ids are >= 0. Fix: use {ignore_index} for ignored positions, e.g. "
                f"`[x if x >= 0 else {ignore_index} for x in labels]`."
            )
        if completion_only and "completion_mask" in values:
            base = labels if labels is not None else ids
            labels = [lab if keep else ignore_index for lab, keep in zip(base, values["completion_mask"], strict=True)]
        mask = values.pop("attention_mask", None)
        keep = None if mask is None or all(mask) else [i for i, m in enumerate(mask) if m]

        def trim(seq):
            return seq if keep is None else [seq[i] for i in keep]

        ids = trim(ids)
        labels = trim(labels) if labels is not None else None
        if completion_only and example.get("prompt_length") is not None:
            # `prompt_length` counts real tokens (as in the collator), so it applies after padding is trimmed
            start = int(example["prompt_length"])
            base = labels if labels is not None else ids
            labels = [ignore_index] * min(start, len(base)) + list(base[start:])
        out = {"input_ids": ids}
        if labels is not None:
            out["labels"] = labels
        return out

    drop = [c for c in ("attention_mask", "prompt_length", "completion_mask") if c in columns]
    return map_rows(
        dataset,
        tidy_row,
        desc=f"Checking pre-tokenized {dataset_name} dataset",
        columns=["input_ids", "labels", "completion_mask", "attention_mask", "prompt_length"],
        remove_columns=drop,
    )


def _check_integer_columns(dataset, dataset_name: str) -> None:
    """`input_ids` and `labels` hold integers (a float or string column fails deep inside torch otherwise)."""
    features = getattr(dataset, "features", None) or {}
    for key in ("input_ids", "labels"):
        dtype = getattr(getattr(features.get(key), "feature", None), "dtype", None)
        if dtype is not None and not dtype.startswith(("int", "uint")):
            raise DatasetTypeError(
                f"The {dataset_name} dataset's column `{key}` holds {dtype} values; token ids and labels must be "
                f"integers. Fix: rebuild `{key}` from the tokenizer's output (whole-number floats can be cast: "
                f"`dataset.cast_column('{key}', datasets.Sequence(datasets.Value('int64')))`)."
            )


def _in_memory_kwargs(dataset: Dataset) -> dict[str, Any]:
    """`map` arguments for a dataset held in memory: a fresh fingerprint instead of one hashed from the function.

    `datasets` hashes the mapped function and everything it closes over (a tokenizer, templates) to name a cache
    file; that hashing costs more than a fast pass itself. A dataset without cache files is never read back from a
    cache, so the hash buys nothing there. Datasets loaded from disk keep `datasets`' own fingerprints and caching.
    """
    if dataset.cache_files:
        return {}
    from datasets.fingerprint import generate_random_fingerprint

    return {"new_fingerprint": generate_random_fingerprint()}


def map_rows(
    dataset: Dataset | IterableDataset,
    fn,
    *,
    desc: str,
    columns: Sequence[str] | None = None,
    remove_columns: Sequence[str] = (),
) -> Dataset | IterableDataset:
    """`dataset.map(fn, with_indices=True, remove_columns=...)` for a per-row `fn(example, index) -> dict`, in
    batches of 1000 rows, reading and rewriting only `columns` (the ones `fn` reads; all when `None`).

    The per-row Python work is the same; what goes is the Arrow decode and encode of every single row and of the
    columns `fn` never touches (conversations, images), which cost more than most row checks themselves. The other
    columns are joined back unchanged, in their order. A streaming dataset is mapped row by row.
    """
    if not isinstance(dataset, Dataset):
        return dataset.map(fn, with_indices=True, remove_columns=list(remove_columns) or None)
    from datasets import concatenate_datasets

    def apply(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        keys = list(batch)
        rows = [fn({key: batch[key][j] for key in keys}, index) for j, index in enumerate(indices)]
        return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}

    order = [c for c in dataset.column_names if c not in remove_columns]
    read = [c for c in dataset.column_names if columns is None or c in columns]
    mapped = dataset.select_columns(read).map(
        apply,
        with_indices=True,
        batched=True,
        desc=desc,
        remove_columns=[c for c in remove_columns if c in read] or None,
        **_in_memory_kwargs(dataset),
    )
    untouched = [c for c in order if c not in read and c not in mapped.column_names]
    if not untouched:
        return mapped
    joined = concatenate_datasets([dataset.select_columns(untouched), mapped], axis=1)
    return joined.select_columns(order + [c for c in mapped.column_names if c not in order])


def tokenize_plain(
    dataset: Dataset | IterableDataset,
    tokenizer,
    *,
    text_field: str,
    completion_only: bool,
    dataset_name: str,
    num_proc: int | None = None,
    ignore_index: int = -100,
) -> Dataset | None:
    """TRL's tokenization of string prompt/completion or text rows, batched; `None` where it does not apply.

    The result is what `SFTTrainer._prepare_dataset` (trl 1.16) builds from the same rows, column for column: the
    eos token appended to each completion (or text) that lacks it; `input_ids` = tokens of prompt + completion; the
    completion starting where the tokenized prompt and prompt + completion diverge; `labels` = `input_ids` with the
    prompt set to `ignore_index` when `completion_only`. It tokenizes 1000 rows per tokenizer call and builds the
    labels in the same pass, where TRL makes four passes of one row each. It applies to a `Dataset` of string rows
    with a tokenizer (not a multimodal processor) and exactly one of the layouts (`prompt` + `completion`, or
    `text_field`); conversational rows and anything else go through TRL.
    """
    from transformers import PreTrainedTokenizerBase
    from trl.data_utils import common_prefix_length

    if not isinstance(dataset, Dataset) or not isinstance(tokenizer, PreTrainedTokenizerBase) or len(dataset) == 0:
        return None
    columns = set(dataset.column_names)
    if "input_ids" in columns or columns & set(_CONVERSATION_COLUMNS):
        return None
    pairs = {"prompt", "completion"} <= columns and text_field not in columns
    text = text_field in columns and "prompt" not in columns and "completion" not in columns
    fields = ("prompt", "completion") if pairs else (text_field,) if text else ()
    if not fields or not all(_all_strings(dataset, name) for name in fields):
        return None
    eos = tokenizer.eos_token
    if eos is None:
        return None
    said: list[bool] = []

    def with_eos(values: list[str]) -> list[str]:
        return [value if value.endswith(eos) else value + eos for value in values]

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        if not pairs:
            texts = with_eos(batch[text_field])
            ids = tokenizer(text=texts)["input_ids"]
            return {text_field: texts, "input_ids": ids, "labels": [list(row) for row in ids]}
        completions = with_eos(batch["completion"])
        prompt_ids = tokenizer(text=batch["prompt"])["input_ids"]
        full_ids = tokenizer(text=[p + c for p, c in zip(batch["prompt"], completions, strict=True)])["input_ids"]
        labels = []
        for prompt, full in zip(prompt_ids, full_ids, strict=True):
            start = common_prefix_length(prompt, full)
            if start < len(prompt) and not said:
                said.append(True)
                _prefix_warning(tokenizer.decode(prompt[start:]))
            labels.append([ignore_index] * start + full[start:] if completion_only else list(full))
        return {"completion": completions, "input_ids": full_ids, "labels": labels}

    kwargs = _in_memory_kwargs(dataset) if not num_proc or num_proc <= 1 else {}  # num_proc > 1 hashes per shard
    return dataset.map(tokenize, batched=True, num_proc=num_proc, desc=f"Tokenizing {dataset_name} dataset", **kwargs)


def _prefix_warning(tail: str) -> None:
    from transformers.utils import logging

    logging.get_logger(__name__).warning(
        "The tokenized prompt is not a prefix of the tokenized prompt+completion, usually because tokens merge across "
        f"the boundary. The completion starts where they diverge; this end of the prompt is not trained: {tail!r}. "
        "To avoid it, end the prompt on a token boundary (e.g. start the completion with a space). Shown once."
    )
