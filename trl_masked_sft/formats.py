"""What a dataset looks like, decided once: its `Layout`, and the checks of its values (the tokenization of rows
that are plain text is `text_rows`).

Every check names the row, the column, the value seen and the fix. `[question, answer]` rows become prompt/completion
rows, a numeric answer written `" <answer>{answer}</answer>"` wherever they enter (trainer, audit, inspector, CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, Value

from .errors import DatasetFormatError, DatasetTypeError
from .hf_compat import column_names, first_row, map_rows
from .masking import clean_row
from .options import MaskingOptions
from .policies import REASON
from .row_checks import (
    build_rows,
    check_list_rows,
    check_messages,
    check_text,
    check_token_features,
    check_token_row,
    dataset_fix,
    describe,
    is_number,
    to_string,
    to_text,
)

__all__ = [
    "Layout",
    "apply_formatting",
    "check_values",
    "coerce_dataset",
    "clean_pretokenized",
    "coerce_datasets",
    "detect_layout",
    "format_answer",
]

CONVERSATION_COLUMNS = ("messages", "conversations")


class Layout(Enum):
    """The shapes of rows the preparation pipeline takes; each goes its own way to `(input_ids, labels)`."""

    PROMPT_COMPLETION = "prompt/completion strings"
    CONVERSATION = "conversation (`messages` or `conversations`)"
    CONVERSATIONAL_PROMPT_COMPLETION = "prompt/completion given as messages"
    TEXT = "text"
    PRETOKENIZED = "pre-tokenized (`input_ids`)"

    @property
    def is_conversational(self) -> bool:
        return self in (Layout.CONVERSATION, Layout.CONVERSATIONAL_PROMPT_COMPLETION)


def detect_layout(
    dataset: Dataset | IterableDataset, options: MaskingOptions, dataset_name: str, *, template: bool = False
) -> Layout:
    """The dataset's layout, from its columns (and first row): the one place it is decided.

    In order: pre-tokenized `input_ids`; the `dataset_text_field` column when it is set to another name than TRL's
    default `"text"`, or when a response template (`template`: the collator's or `response_template`) is there to
    mask it, as old TRL scripts kept `prompt`/`target` beside `text`; a conversation column; the prompt and
    completion columns (`prompt_column`, `completion_column`), as strings or as lists of messages; the text column.
    Anything else raises, naming the columns seen and the fields to set.
    """
    columns = column_names(dataset)
    prompt, completion, text = options.prompt_column, options.completion_column, options.text_field
    if "input_ids" in columns:
        layout = Layout.PRETOKENIZED
        boundaries = {"labels", "completion_mask", "prompt_length", "assistant_masks"}
        if prompt in columns and completion in columns and not boundaries & set(columns):
            raise DatasetFormatError(
                f"The {dataset_name} dataset has `input_ids` beside `{prompt}`/`{completion}` but no `labels` or "
                "`completion_mask`: tokenized rows are trained as given, so these would train the prompt too. Fix: "
                "drop the stale column (`dataset.remove_columns(['input_ids'])`) so the prompt and completion are "
                "tokenized and masked here, or add a `completion_mask` (or `labels`) to the tokenized rows."
            )
    elif text in columns and (text != "text" or template):
        layout = Layout.TEXT
    elif any(c in columns for c in CONVERSATION_COLUMNS):
        layout = Layout.CONVERSATION
    elif prompt in columns and completion in columns:
        row = first_row(dataset) or {}
        messages = isinstance(row.get(prompt), list) and isinstance(row.get(completion), list)
        layout = Layout.CONVERSATIONAL_PROMPT_COMPLETION if messages else Layout.PROMPT_COMPLETION
    elif prompt in columns or completion in columns:
        missing, field_name = (completion, "completion_column") if prompt in columns else (prompt, "prompt_column")
        template_fix = "pass a response-template collator or set `response_template` (they mask its prompt)"
        also = f"; or, to train the `{text}` column, {template_fix}" if text in columns else ""
        raise DatasetFormatError(
            f"The {dataset_name} dataset has no `{missing}` column (columns: {columns}). Fix: set `{field_name}` to "
            f"the column that holds the {'completion' if prompt in columns else 'prompt'}{also}."
        )
    elif text in columns:
        layout = Layout.TEXT
    else:
        raise DatasetFormatError(
            f"The {dataset_name} dataset has columns {columns}, none of which MaskedSFTTrainer can train on: it "
            f"looks for `{prompt}` + `{completion}` (`prompt_column`, `completion_column`), `{text}` "
            "(`dataset_text_field`), `messages`, or pre-tokenized `input_ids`. Fix: set `prompt_column`/"
            "`completion_column` to your column names, e.g. MaskedSFTConfig(prompt_column='question', "
            "completion_column='answer')."
        )
    if options.assistant_only and not layout.is_conversational:
        raise DatasetFormatError(
            f"`assistant_only_loss=True`, but the {dataset_name} dataset is {layout.value}, not conversational; "
            "assistant turns exist only in conversations (as TRL says too). Fix: drop `assistant_only_loss` (prompt/"
            "completion rows train the completion only by default), or give the rows as `messages`."
        )
    return layout


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


# ---------------------------------------------------------------------------------------------------- value checks


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
