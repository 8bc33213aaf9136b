"""Pure masking functions: token ids in, labels out. No tensors, no trainer state, easy to test on literal lists.

Conventions: `labels[i] == ignore_index` means position `i` is not trained. Causal LMs predict token `i` from the
tokens before it, so position 0 is never a target ("after the causal shift"); `count_supervised` leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import DatasetFormatError

__all__ = [
    "IGNORE_INDEX",
    "WEIGHTS",
    "TemplateMatcher",
    "apply_keep_mask",
    "clean_row",
    "count_supervised",
    "find_subsequence",
    "find_template",
    "find_template_in_text",
    "find_template_in_text_trimmed",
    "first_supervised",
    "merge_occurrences",
    "response_spans",
    "spans_to_labels",
    "supervises_only_stop_tokens",
    "supervision_stats",
    "template_variants",
    "truncate_row",
]

#: The label of a position that is not trained: what `torch.nn.CrossEntropyLoss` and TRL's loss ignore.
IGNORE_INDEX = -100
#: The per-token loss weight column (floats, aligned with `labels`), present only when a message carries a weight.
WEIGHTS = "loss_weights"

# Left contexts a template commonly follows; BPE tokenizers merge its first characters with them differently.
_CONTEXTS = ("\n", " ", "\n\n", ".", "?", ":", "a", "A", "1", ")", "\t")


def find_subsequence(seq: Sequence[int], sub: Sequence[int], start: int = 0) -> list[int]:
    """All positions `p >= start` where `seq[p:p + len(sub)] == sub` (empty `sub` matches nowhere)."""
    n = len(sub)
    if n == 0:
        return []
    first = sub[0]
    sub = list(sub)
    return [p for p in range(start, len(seq) - n + 1) if seq[p] == first and list(seq[p : p + n]) == sub]


def template_variants(tokenizer, template: str | Sequence[int]) -> list[list[int]]:
    """The token sequences `template` can take inside a row.

    Token ids are used as given. A string is tokenized alone and after each of a few common left contexts (a
    newline, a space, punctuation...): "### Answer:" after a newline is often tokenized differently than alone, which
    is the classic reason old completion-only scripts masked whole rows. Longest variants come first.
    """
    if not isinstance(template, str):
        return [list(template)]
    variants = [tokenizer(template, add_special_tokens=False)["input_ids"]]
    for context in _CONTEXTS:
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        full = tokenizer(context + template, add_special_tokens=False)["input_ids"]
        if full[: len(ctx_ids)] == ctx_ids and len(full) > len(ctx_ids):
            variants.append(full[len(ctx_ids) :])
    unique: list[list[int]] = []
    for variant in variants:
        if variant and variant not in unique:
            unique.append(variant)
    return sorted(unique, key=len, reverse=True)


def find_template(ids: Sequence[int], variants: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) token spans where any variant occurs, the longest variant winning at a position."""
    found: dict[int, int] = {}
    for variant in variants:
        for p in find_subsequence(ids, variant):
            found[p] = max(found.get(p, p), p + len(variant))
    return merge_occurrences(sorted(found.items()))


def merge_occurrences(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep the spans (sorted by start) that do not overlap an earlier kept one."""
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    return kept


def _text_occurrences(text: str, template: str) -> list[int]:
    """Character offsets of the non-overlapping occurrences of `template` in `text`."""
    starts: list[int] = []
    pos = text.find(template)
    while pos != -1:
        starts.append(pos)
        pos = text.find(template, pos + len(template))
    return starts


def find_template_in_text(tokenizer, ids: Sequence[int], template: str) -> list[tuple[int, int]]:
    """Token spans covering each occurrence of `template` in the decoded row: the fallback when no token variant
    matches (the template's first or last characters merged with its neighbours into other tokens).

    A span starts at the token holding the template's first character and ends after the token holding its last,
    so a token shared with the completion is masked rather than half-trained.
    """
    text = tokenizer.decode(ids)
    starts = _text_occurrences(text, template)
    if not starts:
        return []

    def tokens_to_cover(n_chars: int) -> int:
        lo, hi = 0, len(ids)  # smallest k with len(decode(ids[:k])) >= n_chars
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.decode(ids[:mid])) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    return [(tokens_to_cover(start + 1) - 1, tokens_to_cover(start + len(template))) for start in starts]


def response_spans(
    ids_length: int,
    responses: Sequence[tuple[int, int]],
    instructions: Sequence[tuple[int, int]] = (),
) -> list[tuple[int, int]] | None:
    """The token spans to train on, given where the templates occur; `None` when no response template occurs.

    Without an instruction template, everything after the *last* response template is trained (the behaviour of
    TRL's former collator). With one, every response is trained: from the end of each response template up to the
    start of the next instruction template (multi-turn alternation).
    """
    if not responses:
        return None
    if not instructions:
        return [(responses[-1][1], ids_length)]
    starts = [start for start, _ in instructions]
    spans = []
    for _, end in responses:
        stop = next((s for s in starts if s >= end), ids_length)
        if stop > end:
            spans.append((end, stop))
    return spans


def spans_to_labels(labels: Sequence[int], spans: Sequence[tuple[int, int]], ignore_index: int) -> list[int]:
    """Keep `labels` inside `spans`, set `ignore_index` elsewhere. An `ignore_index` already there stays."""
    keep = [False] * len(labels)
    for start, end in spans:
        keep[start:end] = [True] * (min(end, len(labels)) - start)
    return [label if k else ignore_index for label, k in zip(labels, keep, strict=True)]


def apply_keep_mask(labels: Sequence[int], keep: Sequence[int], ignore_index: int) -> list[int]:
    """Set `ignore_index` where `keep` is 0 (e.g. a `completion_mask`); never un-mask a position."""
    return [label if k else ignore_index for label, k in zip(labels, keep, strict=True)]


def count_supervised(labels: Sequence[int], ignore_index: int = IGNORE_INDEX) -> int:
    """Number of trained positions after the causal shift (position 0 never counts)."""
    return sum(1 for label in labels[1:] if label != ignore_index)


def first_supervised(labels: Sequence[int], ignore_index: int = IGNORE_INDEX) -> int | None:
    """Index of the first trained position after the causal shift, or `None` when there is none."""
    return next((i for i in range(1, len(labels)) if labels[i] != ignore_index), None)


def supervision_stats(labels: Sequence[int], ignore_index: int = IGNORE_INDEX) -> tuple[int, int | None]:
    """`(count, first position)` of supervised labels after the causal shift."""
    return count_supervised(labels, ignore_index), first_supervised(labels, ignore_index)


def truncate_row(
    ids: list[int],
    labels: list[int],
    max_length: int | None,
    *,
    keep_end: bool = False,
    min_completion: int | None = None,
) -> tuple[list[int], list[int]]:
    """Cut a row to `max_length`: its end (`keep_start`) or its start (`keep_end`).

    With `min_completion`, a row that cutting its end would leave with fewer than `min_completion` completion tokens
    loses the start of its prompt instead, keeping as much of the completion as fits: all of it when it fits beside
    one prompt token (position 0 is never a target), else its first `max_length - 1` tokens.
    """
    if max_length is None or len(ids) <= max_length:
        return ids, labels
    if keep_end:
        return ids[-max_length:], labels[-max_length:]
    if min_completion:
        prompt = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
        completion = len(ids) - prompt
        if max(0, max_length - prompt) < min(min_completion, completion):
            keep = min(completion, max_length - 1)
            cut = min(prompt + keep - max_length, max(prompt - 1, 0))
            ids, labels = ids[cut:], labels[cut:]
    return ids[:max_length], labels[:max_length]


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def clean_row(
    example: dict[str, Any],
    *,
    row: int | str,
    completion_only: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[list[int], list[int] | None]:
    """`(input_ids, labels)` of one pre-tokenized row: lengths checked, padding trimmed, its own masks applied.

    The one clean-up shared by the preparation pipeline and the collator:
    - `labels`, `completion_mask` and `attention_mask` must have one entry per token; a mismatch names the row;
    - `labels` may hold token ids (>= 0) and `ignore_index` only;
    - positions whose `attention_mask` is 0 (padding added in advance) are removed;
    - `assistant_masks` (TRL's column) always masks more; with `completion_only`, a `completion_mask` and a
      `prompt_length` (counted in real tokens) mask more too. A mask only ever masks more: an `ignore_index` already
      in `labels` stays.

    `labels` is `None` when the row has none and no mask applied (the caller decides: TRL copies `input_ids`).
    `row` names the row in errors (an index, or e.g. `"3 of the train dataset"`).
    """
    ids = example.get("input_ids")
    if ids is None or len(ids) == 0:
        raise DatasetFormatError(f"Row {row} has empty `input_ids`. Remove empty rows from the dataset.")
    ids = _as_list(ids)
    columns: dict[str, list] = {}
    for key in ("labels", "completion_mask", "assistant_masks", "attention_mask"):
        value = example.get(key)
        if key in example and (value is None or len(value) != len(ids)):
            raise DatasetFormatError(
                f"Row {row}: `{key}` has {'no' if value is None else len(value)} entries but `input_ids` has "
                f"{len(ids)}. Fix: build `{key}` from the same tokenization as `input_ids`, one entry per token."
            )
        if value is not None:
            columns[key] = _as_list(value)
    labels = columns.get("labels")
    bad = next((v for v in labels or () if v < 0 and v != ignore_index), None)
    if bad is not None:
        raise DatasetFormatError(
            f"Row {row}: `labels` holds {bad}; only {ignore_index} marks a position that is not trained, and token "
            f"ids are >= 0. Fix: use {ignore_index} for ignored positions, e.g. "
            f"`[x if x >= 0 else {ignore_index} for x in labels]`."
        )
    attention = columns.pop("attention_mask", None)
    if attention is not None and not all(attention):
        keep = [i for i, m in enumerate(attention) if m]
        ids = [ids[i] for i in keep]
        columns = {key: [values[i] for i in keep] for key, values in columns.items()}
        labels = columns.get("labels")
    if "assistant_masks" in columns:
        labels = apply_keep_mask(labels if labels is not None else ids, columns["assistant_masks"], ignore_index)
    if completion_only and "completion_mask" in columns:
        labels = apply_keep_mask(labels if labels is not None else ids, columns["completion_mask"], ignore_index)
    prompt_length = example.get("prompt_length")
    if completion_only and prompt_length is not None:
        base = labels if labels is not None else ids
        start = int(prompt_length)
        labels = [ignore_index] * min(start, len(base)) + list(base[start:])
    return ids, labels


class TemplateMatcher:
    """Where a response template (and an optional instruction template) occurs in a row of token ids.

    A string template is searched *in context*: as it tokenizes alone and after common left contexts, then in the
    decoded text where its first or last characters merged with their neighbours. `spans(ids)` gives the token spans
    to train on. Used by the collator and by the preparation pipeline, so both mask a row the same way.
    """

    def __init__(self, tokenizer, response_template: str | Sequence[int], instruction_template=None):
        self.tokenizer = tokenizer
        self.response_template = response_template
        self.instruction_template = instruction_template
        self._response_variants = template_variants(tokenizer, response_template)
        self._instruction_variants = (
            template_variants(tokenizer, instruction_template) if instruction_template is not None else []
        )

    def _occurrences(self, ids: list[int], template, variants) -> list[tuple[int, int]]:
        """Where `template` occurs: token variants first; a string template is also counted in the decoded text,
        and when the text holds more occurrences than the variants matched (some merged with their neighbours into
        other tokens), the text positions fill in the rest."""
        found = find_template(ids, variants)
        if isinstance(template, str) and self.tokenizer.decode(ids).count(template) > len(found):
            extra = [s for s in find_template_in_text_trimmed(self.tokenizer, ids, template) if s not in found]
            found = merge_occurrences(sorted(found + extra))
        return found

    def spans(self, ids: Sequence[int]) -> list[tuple[int, int]] | None:
        """The spans of `ids` to train on by the templates; `None` when the response template is not found."""
        ids = list(ids)
        responses = self._occurrences(ids, self.response_template, self._response_variants)
        if not responses:
            return None
        instructions = (
            self._occurrences(ids, self.instruction_template, self._instruction_variants)
            if self.instruction_template is not None
            else []
        )
        return response_spans(len(ids), responses, instructions)


def find_template_in_text_trimmed(tokenizer, ids: Sequence[int], template: str) -> list[tuple[int, int]]:
    """Token spans of each occurrence of `template` in the decoded row, where the template's leading and trailing
    whitespace may share a token with its neighbours.

    A byte-level BPE (GPT-2 style) glues a space to the word after it: in `"Answer: Paris"` the template `"Answer: "`
    ends inside the token `" Paris"`. Here a span ends exactly before the first token that holds text after the
    template's last non-whitespace character, so that token (the answer) is trained; a token that holds non-space
    characters of both the template and what follows is still masked. Likewise a span starts at the token holding
    the template's first non-whitespace character.
    """
    text = tokenizer.decode(ids)
    core = template.strip() or template
    lead = len(template) - len(template.lstrip()) if template.strip() else 0
    core_end = lead + len(core)
    starts = _text_occurrences(text, template)
    if not starts:
        return []
    lengths: dict[int, int] = {}

    def decoded_length(k: int) -> int:
        if k not in lengths:
            lengths[k] = len(tokenizer.decode(ids[:k]))
        return lengths[k]

    def tokens_to_cover(n_chars: int) -> int:
        lo, hi = 0, len(ids)  # smallest k with len(decode(ids[:k])) >= n_chars
        while lo < hi:
            mid = (lo + hi) // 2
            if decoded_length(mid) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    spans = []
    for start in starts:
        first = tokens_to_cover(start + lead + 1) - 1
        end_chars = start + len(template)
        end = tokens_to_cover(end_chars)
        if decoded_length(end) > end_chars and decoded_length(end - 1) >= start + core_end:
            end -= 1  # the last token starts in the trailing whitespace: it belongs to what follows
        spans.append((first, max(end, first + 1)))
    return spans


def supervises_only_stop_tokens(
    labels: Sequence[int], stop_ids: Sequence[int] | set[int], ignore_index: int = IGNORE_INDEX
) -> bool:
    """Whether the row trains something, but only stop tokens (eos, end-of-turn, pad): nothing of the answer.

    The tell-tale of a response template matched in the wrong place (e.g. its trailing space merged with the
    answer's first word and the whole answer masked): the row still has a supervised token, so no count of
    supervised tokens notices. Position 0 is never a target and does not count.
    """
    stop = set(stop_ids)
    supervised = [label for label in labels[1:] if label != ignore_index]
    return bool(supervised) and all(label in stop for label in supervised)
