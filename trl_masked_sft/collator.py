"""`DataCollatorForCompletionOnlyLM`: the completion-only collator TRL removed in 0.20, restored and made robust."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .errors import MaskedSFTWarning, TemplateNotFoundError
from .masking import IGNORE_INDEX, TemplateMatcher, clean_row, spans_to_labels

__all__ = ["DataCollatorForCompletionOnlyLM"]


def _check_template(name: str, template: Any) -> None:
    if isinstance(template, str):
        if not template:
            raise ValueError(
                f"`{name}` is an empty string. Pass the text that precedes each answer, e.g. '### Answer:'."
            )
        return
    if isinstance(template, Sequence) and template and all(isinstance(t, int) for t in template):
        return
    raise TypeError(
        f"`{name}` must be a non-empty string or a non-empty list of token ids, got {type(template).__name__} "
        f"{template!r}. Pass e.g. '### Answer:' or tokenizer.encode('### Answer:', add_special_tokens=False)."
    )


class DataCollatorForCompletionOnlyLM:
    """Pads a batch and masks everything but the completion, so the loss is computed on the answers only.

    The constructor is that of the collator TRL removed in 0.20, so old scripts run unchanged. Labels come from, in
    order: the row's own `labels` (else a copy of `input_ids`), then its `completion_mask` or `prompt_length`, then
    the templates. Each step can only mask more: a `-100` the user put in `labels` is never overwritten.

    Guarantees, whatever the input:
    - prompt/instruction tokens and padding get `ignore_index`;
    - padding is found from `attention_mask` (or the row length), never by comparing ids with the pad id, so the
      completion's end-of-sequence token stays supervised when pad == eos;
    - pre-padded rows are trimmed using `attention_mask` and each batch is padded (on the right) to its longest
      real row, rounded up to `pad_to_multiple_of`.

    Args:
        response_template (`str` or `list[int]`, *optional*):
            The text (or token ids) right before each answer, e.g. `"### Answer:"`. A string is searched *in
            context*: as it tokenizes alone and after common left contexts (a newline, a space, punctuation), and
            finally in the decoded text. `None` when the rows carry their own boundary (`completion_mask`,
            `prompt_length` or `labels`).
        instruction_template (`str` or `list[int]`, *optional*):
            The text before each user turn, for multi-turn rows: every response is then trained, from the end of
            its response template to the start of the next instruction template.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Gives the pad id and tokenizes string templates. Without a pad token, the eos token is used (with a
            warning).
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of positions that are not trained.
        pad_to_multiple_of (`int`, *optional*):
            Pad each batch to a multiple of this length.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
        mlm (`bool`, *optional*, defaults to `False`):
            Accepted for compatibility with the old constructor; masked language modelling is not supported.

    Raises:
        TemplateNotFoundError: a row does not contain `response_template`; the message names the row and shows its
            text. (`MaskedSFTTrainer` finds such rows before training and applies `masked_row_policy`.)
        DatasetFormatError: a row is empty or its `labels`/`completion_mask` length differs from `input_ids`.
    """

    def __init__(
        self,
        response_template: str | list[int] | None = None,
        instruction_template: str | list[int] | None = None,
        *,
        tokenizer,
        ignore_index: int = IGNORE_INDEX,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        mlm: bool = False,
    ):
        if mlm:
            raise ValueError(
                "`mlm=True` is not supported: this collator is for causal language models. Remove `mlm` or set it "
                "to False."
            )
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}. Remove the argument.")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"`pad_to_multiple_of` must be a positive int or None, got {pad_to_multiple_of!r}.")
        if not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__} {ignore_index!r}.")
        if response_template is not None:
            _check_template("response_template", response_template)
        if instruction_template is not None:
            if response_template is None:
                raise ValueError(
                    "`instruction_template` was given without `response_template`: the instruction template only "
                    "marks where each masked user turn starts. Pass `response_template` too."
                )
            _check_template("instruction_template", instruction_template)
        self.response_template = response_template
        self.instruction_template = instruction_template
        self.tokenizer = tokenizer
        self.ignore_index = ignore_index
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an eos token, so there is nothing to pad with. Set one, "
                "e.g. `tokenizer.pad_token = tokenizer.eos_token` or `tokenizer.add_special_tokens({'pad_token': "
                "'<pad>'})`."
            )
        if tokenizer.pad_token_id is None:
            warnings.warn(
                f"The tokenizer has no pad token; padding with the eos token (id {pad_id}). The eos token that ends "
                "each completion stays supervised: padding is found by length, not by id.",
                MaskedSFTWarning,
                stacklevel=2,
            )
        self.pad_token_id = pad_id
        self._matcher = (
            TemplateMatcher(tokenizer, response_template, instruction_template) if response_template else None
        )

    @property
    def has_template(self) -> bool:
        """Whether this collator masks by template (else it relies on the rows' own boundary)."""
        return self.response_template is not None

    @property
    def matcher(self) -> TemplateMatcher | None:
        """The template matcher (shared with the preparation pipeline), or `None` without a response template."""
        return self._matcher

    def template_spans(self, ids: Sequence[int]) -> list[tuple[int, int]] | None:
        """The spans of `ids` to train on by the templates; `None` when the response template is not found."""
        return self._matcher.spans(ids)

    def row_labels(self, example: dict[str, Any], row: int = 0) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` of one example, padding removed and masks applied.

        Raises `TemplateNotFoundError` when a response template is set and absent from the row.
        """
        given = {key: value for key, value in example.items() if value is not None}
        ids, labels = clean_row(given, row=row, ignore_index=self.ignore_index)
        labels = labels if labels is not None else list(ids)
        if self.has_template:
            spans = self._matcher.spans(ids)
            if spans is None:
                raise TemplateNotFoundError(
                    f"Row {row} of the batch does not contain `response_template` {self.response_template!r}, so "
                    f"none of its tokens could be trained. Row text (end): {self.tokenizer.decode(ids)[-160:]!r}. "
                    "Fix: make the template match the data exactly (spaces and newlines count), pass its token ids, "
                    "or remove such rows. `MaskedSFTTrainer` finds these rows before training and applies "
                    "`masked_row_policy`."
                )
            labels = spans_to_labels(labels, spans, self.ignore_index)
        return ids, list(labels)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("The collator received an empty list of examples; check the dataset is not empty.")
        rows = [self.row_labels(example, row=i) for i, example in enumerate(examples)]
        longest = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), self.ignore_index, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (ids, row_labels) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
