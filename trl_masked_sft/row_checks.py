"""The checks of row values: each names the row, the column, the value seen and the fix.

Pure functions on Python values (no tokenizer), called by `formats`, `text_rows` and the preparation pipeline before a
value can fail inside Arrow, a tokenizer, a chat template or torch's embedding lookup; and `check_values`, which runs
the ones a dataset's layout reads over its columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, IterableDataset, Value

from .errors import DatasetFormatError, DatasetTypeError
from .hf_compat import column_names
from .layout import Layout
from .masking import IGNORE_INDEX
from .options import MaskingOptions
from .policies import REASON

__all__ = [
    "check_messages",
    "check_text",
    "check_token_features",
    "check_token_row",
    "check_values",
    "describe",
    "find_unencodable",
    "is_number",
    "parse_tools",
    "to_string",
    "to_text",
]


def describe(value: Any) -> str:
    """`type value` for a message, the value cut at 60 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_text(value: Any, *, row: int | str, column: str, dataset_name: str) -> Any:
    """A string (or a non-empty list of messages) as is; a finite number as `str(number)`; anything else raises.

    The one rule for numbers in prompt and completion columns, whatever the rows come in (a list of dicts, a typed
    `Dataset`, a stream): a finite int or float is written with `str()`; NaN, inf and bools have no text and are
    refused, naming `column` (the user's column name).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value  # conversational prompt/completion
    if is_number(value):
        return str(value)
    if value is None:
        fix = "fill in or remove the row"
    elif isinstance(value, bool):
        fix = f"a bool is not text: write `{column}` as the text to train on (e.g. 'yes'/'no'), or remove the row"
    elif isinstance(value, (int, float)):
        fix = (
            "a NaN or infinite number has no text (finite numbers are written with `str()`): fill in or remove the row"
        )
    elif isinstance(value, list) and not value:
        fix = "an empty list is neither text nor messages: fill in or remove the row"
    elif isinstance(value, (bytes, bytearray)):
        fix = "decode it, e.g. `value.decode('utf-8')`"
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        fix = "join the strings (`''.join(value)`) or write them as messages `[{'role': ..., 'content': ...}]`"
    else:
        fix = "convert it to a string"
    raise DatasetTypeError(
        f"Row {row} of the {dataset_name} dataset: column `{column}` must be a string, got {describe(value)} (a "
        f"finite number is written with `str()`). Fix: {fix}."
    )


def find_unencodable(texts: Sequence[Any]) -> tuple[int, int] | None:
    """`(row in texts, character position)` of the first string that is not valid Unicode (a lone surrogate, as
    `bytes.decode(errors='surrogateescape')` leaves), or None."""
    for i, text in enumerate(texts):
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                return i, error.start
    return None


def check_text(values: Sequence[Any], text_field: str, dataset_name: str, start: int = 0) -> None:
    """Every text row is a string (TRL would fail inside tokenization on None or a number)."""
    for i, value in enumerate(values, start):
        if not isinstance(value, str):
            raise DatasetTypeError(
                f"Row {i} of the {dataset_name} dataset: column `{text_field}` (`dataset_text_field`, or the output "
                f"of `formatting_func`) must be a string, got {describe(value)}. Fix: fill in or remove the row, or "
                "make `formatting_func` return a string for every row."
            )


def check_messages(conversations: Sequence[Any], dataset_name: str, start: int = 0, column: str = "messages") -> None:
    """Every conversation is a list of messages with a `role` and a string `content` (None only with tool calls)."""
    for i, messages in enumerate(conversations, start):
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DatasetTypeError(
                f"Row {i} of the {dataset_name} dataset: `{column}` must be a list of {{'role', 'content'}} dicts, "
                f"got {describe(messages)}. Fix: write each row as [{{'role': 'user', 'content': ...}}, ...]."
            )
        for j, message in enumerate(messages):
            if "from" in message and "value" in message and "role" not in message:
                continue  # ShareGPT `conversations`, converted to role/content later
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
                    f"{describe(content)}; it must be a string. Fix: fill in the content, or remove the message or "
                    "the row."
                )


def parse_tools(example: dict[str, Any], row: int | str, dataset_name: str) -> dict[str, Any]:
    """The chat template arguments of a row: its `tools` (a list, or JSON text of one) and `chat_template_kwargs`."""
    tools = example.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(
                f"Row {row} of the {dataset_name} dataset: `tools` is text that is not JSON ({error.msg} at "
                f"character {error.pos}: {tools[:60]!r}). Fix: store the tool schemas as a JSON list "
                '(e.g. `json.dumps([{"type": "function", "function": {...}}])`) or as a list of dicts.'
            ) from error
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, (dict, str)) for t in tools)):
        raise DatasetTypeError(
            f"Row {row} of the {dataset_name} dataset: `tools` must be a list of tool schemas (dicts), got "
            f"{describe(tools)}. Fix: wrap a single schema in a list, or set the column to None for rows without tools."
        )
    extra = example.get("chat_template_kwargs")
    if extra is not None and not isinstance(extra, dict):
        raise DatasetTypeError(
            f"Row {row} of the {dataset_name} dataset: `chat_template_kwargs` must be a dict, got {describe(extra)}. "
            "Fix: e.g. {'enable_thinking': False}, or None."
        )
    kwargs = {"tools": tools} if tools else {}
    kwargs.update(extra or {})
    return kwargs


def _ids(values: Any, row: int | str, column: str, dataset_name: str, *, labels: bool = False) -> None:
    where = f"Row {row} of the {dataset_name} dataset"
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        raise DatasetTypeError(
            f"{where}: `{column}` must be a list of token ids, got {describe(values)}. Fix: store the tokenizer's "
            f"`input_ids` (a list of ints) per row."
        )
    values = values.tolist() if hasattr(values, "tolist") else values
    for position, value in enumerate(values):
        if isinstance(value, (list, tuple)):
            raise DatasetFormatError(
                f"{where}: `{column}` is nested one level too deep (position {position} is a list: "
                f"{describe(value)}). Fix: store one flat list of ids per row, e.g. `ids[0]` for the output of "
                "`tokenizer(text, return_tensors=...)`, or split the nested sequences into rows."
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise DatasetTypeError(
                f"{where}: `{column}` holds {describe(value)} at position {position}; token ids are ints. Fix: "
                f"rebuild `{column}` from the tokenizer's output."
            )
        if value < 0 and not labels:  # a negative label other than -100 is named by `masking.clean_row`
            what = "-100 belongs in `labels` only" if value == IGNORE_INDEX else "token ids are >= 0"
            raise DatasetFormatError(
                f"{where}: `{column}` holds {value} at position {position}; {what}, and a negative id fails inside "
                "the model's embedding lookup. Fix: pad `input_ids` with `tokenizer.pad_token_id` and mark the "
                "padding with `attention_mask` 0 (or don't pad: the collator pads each batch); put -100 in `labels`."
            )


def check_token_row(example: dict[str, Any], row: int | str, dataset_name: str, *, typed: bool = False) -> None:
    """A pre-tokenized row's shapes and values, before `masking.clean_row` reads it: flat int ids >= 0, an
    `attention_mask` of 0s and 1s that keeps at least one token, a `prompt_length` that is an int within the row.

    `typed`: the dataset's features already say the columns are flat int lists (`check_token_features`), so only the
    values are checked, at C speed (`min`, `set`); a streamed row is checked element by element.
    """
    ids = example.get("input_ids")
    if ids is None:
        return  # `clean_row` names an empty row
    if not typed or (len(ids) and min(ids) < 0):
        _ids(ids, row, "input_ids", dataset_name)
    if not typed and example.get("labels") is not None:
        _ids(example["labels"], row, "labels", dataset_name, labels=True)
    where = f"Row {row} of the {dataset_name} dataset"
    mask = example.get("attention_mask")
    if mask is not None and len(mask) == len(ids) and len(ids):
        values = set(mask)
        odd = next(iter(values - {0, 1}), None)
        if odd is not None:
            raise DatasetFormatError(
                f"{where}: `attention_mask` holds {odd!r}; it marks real tokens with 1 and padding with 0. Fix: "
                "rebuild it from the tokenizer's output."
            )
        if 1 not in values:
            raise DatasetFormatError(
                f"{where}: `attention_mask` is all 0, so every one of its {len(ids)} tokens counts as padding and "
                "nothing is left to train on (its labels are not the problem). Fix: set 1 on the real tokens (rebuild "
                "the mask with the tokenizer), or remove the row."
            )
    prompt_length = example.get("prompt_length")
    if prompt_length is not None:
        if not isinstance(prompt_length, int) or isinstance(prompt_length, bool) or prompt_length < 0:
            raise DatasetTypeError(
                f"{where}: `prompt_length` must be an int >= 0 (the number of prompt tokens), got "
                f"{describe(prompt_length)}. Fix: store `len(prompt_ids)`."
            )


def to_string(value, *, row: int, column: str, dataset_name: str) -> str:
    """`to_text` for prompt/completion string rows: a list of messages among strings is refused too."""
    text = to_text(value, row=row, column=column, dataset_name=dataset_name)
    if not isinstance(text, str):
        raise DatasetFormatError(
            f"Row {row} of the {dataset_name} dataset: `{column}` is a list of messages, but the dataset's first row "
            "holds strings; a dataset gives prompt and completion all as strings or all as messages. Fix: write "
            "this row like the others, or remove it."
        )
    return text


def check_token_features(features, dataset_name: str) -> None:
    """`input_ids` and `labels` are flat lists of integers, read from the features (a float, string or nested
    column fails deep inside torch otherwise). A streaming dataset without features is checked row by row."""
    features = features or {}
    for key in ("input_ids", "labels"):
        feature = features.get(key)
        if feature is None:
            continue
        inner = getattr(feature, "feature", None)
        if inner is None:
            raise DatasetTypeError(
                f"The {dataset_name} dataset's column `{key}` holds {getattr(feature, 'dtype', feature)} values, one "
                f"per row; it must hold a list of token ids per row. Fix: store the tokenizer's `{key}` (a list of "
                "ints), e.g. `tokenizer(text)['input_ids']`."
            )
        if getattr(inner, "feature", None) is not None:
            raise DatasetFormatError(
                f"The {dataset_name} dataset's column `{key}` is nested one level too deep ({feature}): each row holds "
                f"a list of lists. Fix: store one flat list of ids per row, e.g. `ids[0]` for the output of "
                "`tokenizer(text, return_tensors=...)`, or split the nested sequences into rows."
            )
        dtype = getattr(inner, "dtype", None)
        if dtype is not None and not dtype.startswith(("int", "uint")):
            raise DatasetTypeError(
                f"The {dataset_name} dataset's column `{key}` holds {dtype} values; token ids and labels must be "
                f"integers. Fix: rebuild `{key}` from the tokenizer's output (whole-number floats can be cast: "
                f"`dataset.cast_column('{key}', datasets.Sequence(datasets.Value('int64')))`)."
            )


# ---------------------------------------------------------------------------------------------------- the values a layout reads


def check_values(
    dataset: Dataset | IterableDataset, layout: Layout, options: MaskingOptions, dataset_name: str
) -> tuple[Dataset | IterableDataset, set[int]]:
    """Check the values the layout reads; rename the prompt/completion columns to `prompt`/`completion`.

    Returns the dataset and the indices of rows whose completion is empty (the pre-flight audit reports them under
    `masked_row_policy`; a streaming dataset marks them in a column instead).
    """
    if layout is Layout.PRETOKENIZED:
        check_token_features(getattr(dataset, "features", None), dataset_name)
        return dataset, set()
    if layout is Layout.CONVERSATION:
        if "messages" in column_names(dataset) and isinstance(dataset, Dataset):
            check_messages(dataset["messages"], dataset_name)
        return dataset, set()
    if layout is Layout.TEXT:
        if isinstance(dataset, Dataset) and not _all_strings(dataset, options.text_field):
            check_text(dataset[options.text_field], options.text_field, dataset_name)
        return dataset, set()
    columns = column_names(dataset)
    renames = {
        old: new
        for old, new in ((options.prompt_column, "prompt"), (options.completion_column, "completion"))
        if old != new
    }
    for old, new in renames.items():
        if new in columns:
            raise DatasetFormatError(
                f"The {dataset_name} dataset has both `{old}` (`{new}_column`) and `{new}` columns. Fix: drop or "
                f"rename `{new}`."
            )
    if renames:
        dataset = dataset.rename_columns(renames)
    shown = (options.prompt_column, options.completion_column)
    if layout is Layout.CONVERSATIONAL_PROMPT_COMPLETION:
        if isinstance(dataset, Dataset):
            for column, name in zip(("prompt", "completion"), shown, strict=True):
                check_messages(dataset[column], dataset_name, column=name)
        return dataset, set()
    if isinstance(dataset, IterableDataset):
        kwargs = {"dataset_name": dataset_name, "shown": shown}
        return dataset.map(_check_example, with_indices=True, fn_kwargs=kwargs), set()
    return _check_columns(dataset, dataset_name, *shown)


def _all_strings(dataset: Dataset, column: str) -> bool:
    """A string column without nulls, read from the Arrow metadata (no pass over the rows)."""
    feature = dataset.features.get(column)
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        return False
    return dataset.data.column(column).null_count == 0


def _check_example(example: dict, index: int, dataset_name: str, shown: tuple[str, str]) -> dict:
    """Row check for streaming datasets, as the rows are read. An empty completion is marked for the pre-flight
    check, which applies `masked_row_policy` as it reads the rows."""
    completion = to_string(example["completion"], row=index, column=shown[1], dataset_name=dataset_name)
    return {
        "prompt": to_string(example["prompt"], row=index, column=shown[0], dataset_name=dataset_name),
        "completion": completion,
        REASON: "empty completion" if not completion.strip() else "",
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
                to_string(value, row=i, column=shown, dataset_name=dataset_name)
                converted = True
            elif column == "completion" and not value.strip():
                empty.add(i)
    if len(empty) == len(completions) > 1:  # one row alone is that row's problem, reported by the pre-flight pass
        raise DatasetFormatError(
            f"Every completion in the {dataset_name} dataset (`{completion_column}`) is empty (all {len(empty)} "
            "rows), so there is nothing to train on. Fix: point `completion_column` at the column that holds the "
            "answers."
        )
    if converted:  # numbers: `str()` here, with the columns typed as strings (`map` would cast them back)
        features = dataset.features.copy()
        features["prompt"] = features["completion"] = Value("string")
        dataset = dataset.map(
            lambda ex, i: {
                "prompt": to_text(ex["prompt"], row=i, column=prompt_column, dataset_name=dataset_name),
                "completion": to_text(ex["completion"], row=i, column=completion_column, dataset_name=dataset_name),
            },
            with_indices=True,
            features=features,
            desc=f"Writing numbers in the {dataset_name} dataset as text",
        )
    return dataset, empty
