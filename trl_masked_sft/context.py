"""Conversation context kept in columns beside the prompt: folded in where the rows are a known public format, named
in one warning where nothing reads it.

Alpaca rows (`prompt_column="instruction"`, `completion_column="output"`) carry context in `input` and, in
LLaMA-Factory's alpaca format, `system` and `history`. They are folded in as each format's own tool does:

- with `system` or `history` (LLaMA-Factory, `AlpacaDatasetConverter`): a conversation: `system` as the system
  message, each `[query, response]` pair of `history` as a user and an assistant turn, then a user turn of the
  instruction and the input joined by a newline (each only when not empty), then the output as the assistant turn.
  The tokenizer's chat template renders it and every assistant turn is trained (LLaMA-Factory trains the history's
  responses too unless `mask_history`).
- with `input` alone (Stanford Alpaca, `train.py`): the prompt is Alpaca's `prompt_input` template (or
  `prompt_no_input` for a row whose input is empty); the output is the completion.

Nothing is folded when every context value is empty. Other layouts with context columns left unused get a warning.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from .errors import DatasetFormatError
from .hf_compat import column_names, first_row
from .logs import get_logger, warn
from .options import MaskingOptions

logger = get_logger(__name__)

__all__ = ["ALPACA_PROMPT_INPUT", "ALPACA_PROMPT_NO_INPUT", "CONTEXT_COLUMNS", "fold_context", "warn_unused_context"]

#: Column names that hold conversation context by common convention.
CONTEXT_COLUMNS = ("system", "system_prompt", "history", "chat_history", "input", "context")
#: Stanford Alpaca's prompts (tatsu-lab/stanford_alpaca, train.py `PROMPT_DICT`).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def _has_values(dataset, column: str) -> bool:
    """Whether any row of `column` holds a non-empty value (a streamed dataset: its first row)."""
    if isinstance(dataset, Dataset):
        return any(value for value in dataset[column])
    return bool((first_row(dataset) or {}).get(column))


def _conversation(example: dict[str, Any], has_system: bool, has_history: bool, index: int, name: str) -> dict:
    messages = []
    if has_system and example.get("system"):
        messages.append({"role": "system", "content": example["system"]})
    history = example.get("history") if has_history else None
    for turn, pair in enumerate(history or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DatasetFormatError(
                f"Row {index} of the {name} dataset: `history` item {turn} is {pair!r:.60}; LLaMA-Factory's alpaca "
                "format keeps each earlier turn as a [query, response] pair. Fix: write it as a pair, or remove it."
            )
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    query = "\n".join(text for text in (example["instruction"], example.get("input")) if text)
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": example["output"]}]
    return {"messages": messages}


def fold_context(dataset, options: MaskingOptions, dataset_name: str, tokenizer):
    """Alpaca rows with context to fold, folded as their own tool does (see the module docstring); else unchanged."""
    columns = column_names(dataset)
    if (options.prompt_column, options.completion_column) != ("instruction", "output") or "messages" in columns:
        return dataset
    if not {"instruction", "output"} <= set(columns):
        return dataset
    used = [c for c in ("system", "history", "input") if c in columns and _has_values(dataset, c)]
    if not used:
        return dataset
    kwargs = (
        {"desc": f"Folding alpaca context into the {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
    )
    named = ", ".join(f"`{c}`" for c in used)
    if "system" in used or "history" in used:
        if getattr(getattr(tokenizer, "tokenizer", tokenizer), "chat_template", None) is None:
            raise DatasetFormatError(
                f"The {dataset_name} dataset is LLaMA-Factory's alpaca format ({named} beside `instruction`/"
                "`output`), which is a conversation, but the tokenizer has no chat template to render it. Fix: set "
                "`tokenizer.chat_template` (or `chat_template_path`), or drop those columns to train without them."
            )
        has_system, has_history = "system" in used, "history" in used
        drop = [c for c in ("instruction", "input", "output", "system", "history") if c in columns]
        dataset = dataset.map(
            lambda ex, i: _conversation(ex, has_system, has_history, i, dataset_name),
            with_indices=True,
            remove_columns=drop,
            **kwargs,
        )
        logger.warning(
            f"The {dataset_name} dataset is LLaMA-Factory's alpaca format: {named} folded in as LLaMA-Factory "
            "does (system message, each history pair a user and an assistant turn, instruction and input joined by "
            "a newline as the last user turn), rendered with the chat template; every assistant turn is trained "
            "(`assistant_turns='last'` trains the output only). To train without that context, drop the columns."
        )
        return dataset

    def stanford(example):
        template = ALPACA_PROMPT_INPUT if example.get("input") else ALPACA_PROMPT_NO_INPUT
        return {"instruction": template.format(instruction=example["instruction"], input=example.get("input"))}

    dataset = dataset.map(stanford, remove_columns=["input"], **kwargs)
    logger.warning(
        f"The {dataset_name} dataset is Stanford Alpaca's format: `input` folded into the prompt with Alpaca's own "
        "prompt (the one with an Input section where `input` is not empty). To keep the instructions as they are, "
        "drop the column (`dataset.remove_columns(['input'])`) or build the prompt yourself."
    )
    return dataset


def warn_unused_context(dataset, used: set[str], dataset_name: str) -> None:
    """One warning naming the context columns (`CONTEXT_COLUMNS`) holding values that no part of training reads."""
    unused = [c for c in column_names(dataset) if c in CONTEXT_COLUMNS and c not in used and _has_values(dataset, c)]
    if not unused:
        return
    named = ", ".join(f"`{c}`" for c in unused)
    warn(
        f"The {dataset_name} dataset has {named}, which look{'s' if len(unused) == 1 else ''} like conversation "
        f"context, but {'it is' if len(unused) == 1 else 'they are'} not used: each row trains on its prompt and "
        "completion alone. Fix: fold the context into the prompt (e.g. `dataset.map(lambda r: {'prompt': "
        "r['context'] + '\\n\\n' + r['prompt']})`) or into `messages` (a system message, earlier turns), or drop "
        f"the column{'s' if len(unused) > 1 else ''} (`dataset.remove_columns([...])`) to train without "
        f"{'it' if len(unused) == 1 else 'them'} knowingly.",
        stacklevel=4,
    )
