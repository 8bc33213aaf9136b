"""`DataCollatorForCompletionOnlyLM`: the completion-only collator TRL removed in 0.20, restored and made robust."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchEncoding

from .errors import MaskedSFTWarning, TemplateNotFoundError
from .masking import (
    IGNORE_INDEX,
    TemplateMatcher,
    clean_row,
    count_supervised,
    spans_to_labels,
    supervises_only_stop_tokens,
)
from .text import clip_end, whole_text

__all__ = ["DataCollatorForCompletionOnlyLM"]

MISSING_TEMPLATE_POLICIES = ("warn", "error")


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


def _as_rows(examples: Any) -> list[Mapping[str, Any]]:
    """The batch as a list of row mappings: rows may be mappings (dicts, `BatchEncoding`), sequences of token ids
    (lists, tuples, tensors, arrays), or the whole batch one mapping of columns (a batched `BatchEncoding`)."""
    if isinstance(examples, Mapping):
        columns = {key: value for key, value in examples.items() if value is not None}
        if "input_ids" not in columns:
            raise ValueError(
                f"The collator received a mapping without `input_ids` (keys: {sorted(columns)}). Pass a list of rows, "
                "each a dict with `input_ids` or a list of token ids."
            )
        count = len(columns["input_ids"])
        return [{key: value[i] for key, value in columns.items()} for i in range(count)]
    rows = []
    for i, example in enumerate(examples):
        if isinstance(example, Mapping):
            rows.append(example)
        elif not isinstance(example, (str, bytes)) and (isinstance(example, Sequence) or hasattr(example, "tolist")):
            rows.append({"input_ids": example})
        else:
            raise TypeError(
                f"Row {i} of the batch is a {type(example).__name__}; the collator takes rows as dicts with "
                "`input_ids` (and optionally `labels`, `attention_mask`, `completion_mask`) or as lists of token ids."
            )
    return rows


class DataCollatorForCompletionOnlyLM:
    """Pads a batch and masks everything but the completion, so the loss is computed on the answers only.

    The constructor, `torch_call` and the returned `BatchEncoding` are those of the collator TRL removed in 0.20
    (itself a `transformers.DataCollatorForLanguageModeling`), so old scripts run unchanged. Labels come from, in
    order: the row's own `labels` (else a copy of `input_ids`), then its `completion_mask` or `prompt_length`, then
    the templates. Each step can only mask more: a `-100` the user put in `labels` is never overwritten.

    Guarantees, whatever the input:
    - prompt/instruction tokens and padding get `ignore_index`;
    - padding is found from `attention_mask` (or the row length), never by comparing ids with the pad id, so the
      completion's end-of-sequence token stays supervised when pad == eos;
    - pre-padded rows are trimmed using `attention_mask` and each batch is padded to its longest real row, rounded
      up to `pad_to_multiple_of`, on the side `tokenizer.padding_side` says (right unless it says "left");
    - a row whose response template is missing, or after whose template only the eos token (or nothing real) is
      trained, is never trained silently: it warns (`MaskedSFTWarning`) naming the row and the template.

    Args:
        response_template (`str` or `list[int]`, *optional*):
            The text (or token ids) right before each answer, e.g. `"### Answer:"`. A string is searched *in
            context*: as it tokenizes alone and after common left contexts (a newline, a space, punctuation), and
            finally in the decoded text, where leading and trailing whitespace may merge with the neighbouring
            tokens (`"Answer: "` with a GPT-2-style tokenizer). `None` when the rows carry their own boundary
            (`completion_mask`, `prompt_length` or `labels`).
        instruction_template (`str` or `list[int]`, *optional*):
            The text before each user turn, for multi-turn rows: every response is then trained, from the end of
            its response template to the start of the next instruction template.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Gives the pad id, the padding side and tokenizes string templates; may be passed as the third
            positional argument, as the old base class took it. Without a pad token, the eos token is used (with a
            warning).
        mlm (`bool`, *optional*, defaults to `False`):
            Accepted for compatibility with the old constructor; masked language modelling is not supported.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of positions that are not trained.
        padding_free (`bool`, *optional*, defaults to `False`):
            Return the batch as one row without padding: `input_ids`, `labels` and `position_ids` of shape
            `(1, total tokens)`, the positions restarting at 0 where each row starts and the first label of each row
            ignored (it would be predicted from the previous row), plus `cu_seq_lens_q`/`cu_seq_lens_k` (int32 row
            boundaries, shape `(1, rows + 1)`) and `max_length_q`/`max_length_k` (the longest row, a tensor of shape
            `(1,)`), shaped exactly as TRL v0.19.1's collator returns them. No
            `attention_mask`: the model needs an attention implementation that reads packed `position_ids`
            (flash attention; `sdpa` and `eager` in transformers >= 4.54, when no cache is built: trainers pass
            `use_cache=False`).
        pad_to_multiple_of (`int`, *optional*):
            Pad each batch to a multiple of this length (ignored with `padding_free`).
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.
        missing_template (`str`, *optional*, defaults to `"warn"`):
            A row without `response_template`: `"warn"` masks the whole row and warns (the old collator's behaviour;
            `MaskedSFTTrainer` finds such rows before training and applies `masked_row_policy`, and an all-masked
            batch raises `AllMaskedBatchError`); `"error"` raises `TemplateNotFoundError`.
        mlm_probability, mask_replace_prob, random_replace_prob, seed, tf_experimental_compile, whole_word_mask:
            Arguments of the base class (`transformers.DataCollatorForLanguageModeling`, 4.x and 5.x), accepted so
            old calls work; they only matter for masked language modelling and have no effect.

    Raises:
        TemplateNotFoundError: with `missing_template="error"`, a row does not contain `response_template`; the
            message names the row and shows its text.
        DatasetFormatError: a row is empty or its `labels`/`completion_mask` length differs from `input_ids`.
    """

    def __init__(
        self,
        response_template: str | list[int] | None = None,
        instruction_template: str | list[int] | None = None,
        tokenizer=None,
        *,
        mlm: bool = False,
        ignore_index: int = IGNORE_INDEX,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        missing_template: str = "warn",
        mlm_probability: float | None = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        tf_experimental_compile: bool = False,
        whole_word_mask: bool = False,
    ):
        if tokenizer is None:
            raise TypeError(
                "DataCollatorForCompletionOnlyLM needs a `tokenizer` (to pad and to find string templates). Pass "
                "it, e.g. `DataCollatorForCompletionOnlyLM('### Answer:', tokenizer=tokenizer)`."
            )
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
        if missing_template not in MISSING_TEMPLATE_POLICIES:
            raise ValueError(
                f"`missing_template` must be one of {MISSING_TEMPLATE_POLICIES}, got {missing_template!r}. Use "
                "'error' to stop at a row without the response template, 'warn' to mask it and warn."
            )
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
        self.mlm = False
        self.ignore_index = ignore_index
        self.padding_free = bool(padding_free)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        self.missing_template = missing_template
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.seed = seed
        self.tf_experimental_compile = tf_experimental_compile
        self.whole_word_mask = whole_word_mask
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
        self._stop_ids = {i for i in getattr(tokenizer, "all_special_ids", []) if i is not None}

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

    def trains_nothing_real(self, ids: Sequence[int], labels: Sequence[int]) -> bool:
        """Whether `labels` train nothing of the answer: no token at all, or only special tokens (eos, end of turn)
        and whitespace. After a template match, that means the template matched in the wrong place or the answer
        is empty."""
        if count_supervised(labels, self.ignore_index) == 0:
            return True
        if supervises_only_stop_tokens(labels, self._stop_ids, self.ignore_index):
            return True
        trained = [label for label in labels[1:] if label != self.ignore_index and label not in self._stop_ids]
        return len(trained) <= 2 and not self.tokenizer.decode(trained).strip()

    def row_labels(self, example: Mapping[str, Any] | Sequence[int], row: int = 0) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` of one example (a dict or a list of token ids), padding removed, masks applied.

        A row without the response template is masked whole and warns (raises `TemplateNotFoundError` with
        `missing_template="error"`); a row where the template leaves only the eos token (or nothing real) to train
        warns.
        """
        example = example if isinstance(example, Mapping) else {"input_ids": example}
        given = {key: value for key, value in example.items() if value is not None}
        ids, labels = clean_row(given, row=row, ignore_index=self.ignore_index)
        labels = labels if labels is not None else list(ids)
        if not self.has_template:
            return ids, list(labels)
        spans = self._matcher.spans(ids)
        if spans is None:
            message = (
                f"Row {row} of the batch does not contain `response_template` {self.response_template!r}, so "
                f"none of its tokens can be trained. Row text (end): {clip_end(whole_text(self.tokenizer, ids), 160)!r}. Fix: "
                "make the template match the data exactly (spaces and newlines count), pass its token ids, raise "
                "`max_length` if truncation cut it, or remove such rows. `MaskedSFTTrainer` finds these rows before "
                "training and applies `masked_row_policy`."
            )
            if self.missing_template == "error":
                raise TemplateNotFoundError(message)
            warnings.warn(f"{message} The row is masked whole.", MaskedSFTWarning, stacklevel=3)
            return ids, [self.ignore_index] * len(ids)
        labels = spans_to_labels(labels, spans, self.ignore_index)
        if self.trains_nothing_real(ids, labels):
            trained = self.tokenizer.decode([label for label in labels[1:] if label != self.ignore_index])
            warnings.warn(
                f"Row {row} of the batch: after `response_template` {self.response_template!r} only {trained!r} is "
                f"trained, nothing of an answer. Row text (end): {clip_end(whole_text(self.tokenizer, ids), 160)!r}. Either the "
                "answer is empty or the template matched in the wrong place. Fix: check the template against a "
                "decoded row (or pass its token ids) and remove rows with an empty answer.",
                MaskedSFTWarning,
                stacklevel=3,
            )
        return ids, list(labels)

    def __call__(self, examples: Any, return_tensors: str | None = None) -> BatchEncoding:
        if return_tensors not in (None, "pt"):
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}. Remove the argument.")
        return self.torch_call(examples)

    def torch_call(self, examples: Any) -> BatchEncoding:
        """Collate `examples` (rows as dicts, `BatchEncoding`s or lists of token ids) into a `BatchEncoding` of
        tensors: `input_ids`, `attention_mask`, `labels` (padded), or the `padding_free` layout."""
        rows = _as_rows(examples)
        if not rows:
            raise ValueError("The collator received an empty list of examples; check the dataset is not empty.")
        rows = [self.row_labels(example, row=i) for i, example in enumerate(rows)]
        if self.padding_free:
            return self._flat_batch(rows)
        return self._padded_batch(rows)

    def _padded_batch(self, rows: list[tuple[list[int], list[int]]]) -> BatchEncoding:
        longest = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), self.ignore_index, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, (ids, row_labels) in enumerate(rows):
            where = slice(longest - len(ids), longest) if left else slice(0, len(ids))
            input_ids[i, where] = torch.tensor(ids, dtype=torch.long)
            labels[i, where] = torch.tensor(row_labels, dtype=torch.long)
            attention_mask[i, where] = 1
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})

    def _flat_batch(self, rows: list[tuple[list[int], list[int]]]) -> BatchEncoding:
        lengths = [len(ids) for ids, _ in rows]
        input_ids = torch.tensor([token for ids, _ in rows for token in ids], dtype=torch.long)
        labels = torch.tensor([label for _, row_labels in rows for label in row_labels], dtype=torch.long)
        position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])
        labels[position_ids == 0] = self.ignore_index  # each row's first token: unpadded, it is never a target
        # Shaped as TRL v0.19.1 returns them: boundaries (1, rows + 1) int32, the longest row a one-element tensor.
        boundaries = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).unsqueeze(0)
        longest = torch.tensor([max(lengths)])
        return BatchEncoding(
            {
                "input_ids": input_ids.unsqueeze(0),
                "labels": labels.unsqueeze(0),
                "position_ids": position_ids.unsqueeze(0),
                "cu_seq_lens_q": boundaries,
                "cu_seq_lens_k": boundaries,
                "max_length_q": longest,
                "max_length_k": longest,
            }
        )
