"""What a dataset looks like, decided once from its columns (and first row): its `Layout`."""

from __future__ import annotations

from enum import Enum

from datasets import Dataset, IterableDataset

from .errors import DatasetFormatError
from .hf_compat import column_names, first_row
from .options import MaskingOptions

__all__ = ["CONVERSATION_COLUMNS", "Layout", "detect_layout"]

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
