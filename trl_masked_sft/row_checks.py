"""The checks of row values: each names the row, the column, the value seen and the fix.

Pure functions on Python values (no dataset, no tokenizer), called by `formats` and the preparation pipeline before
a value can fail inside Arrow, a tokenizer, a chat template or torch's embedding lookup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .errors import DatasetFormatError, DatasetTypeError
from .masking import IGNORE_INDEX

__all__ = [
    "build_rows",
    "check_list_rows",
    "check_messages",
    "check_text",
    "check_token_features",
    "check_token_row",
    "dataset_fix",
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
