"""Pure masking functions: token ids in, labels out. No tensors, no trainer state, easy to test on literal lists.

Conventions: `labels[i] == ignore_index` means position `i` is not trained. Causal LMs predict token `i` from the
tokens before it, so position 0 is never a target ("after the causal shift"); `count_supervised` leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "apply_keep_mask",
    "count_supervised",
    "find_subsequence",
    "find_template",
    "find_template_in_text",
    "merge_occurrences",
    "first_supervised",
    "response_spans",
    "spans_to_labels",
    "template_variants",
]

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


def find_template_in_text(tokenizer, ids: Sequence[int], template: str) -> list[tuple[int, int]]:
    """Token spans covering each occurrence of `template` in the decoded row: the fallback when no token variant
    matches (the template's first or last characters merged with its neighbours into other tokens).

    A span starts at the token holding the template's first character and ends after the token holding its last,
    so a token shared with the completion is masked rather than half-trained.
    """
    text = tokenizer.decode(ids)
    starts: list[int] = []
    pos = text.find(template)
    while pos != -1:
        starts.append(pos)
        pos = text.find(template, pos + len(template))
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


def count_supervised(labels: Sequence[int], ignore_index: int = -100) -> int:
    """Number of trained positions after the causal shift (position 0 never counts)."""
    return sum(1 for label in labels[1:] if label != ignore_index)


def first_supervised(labels: Sequence[int], ignore_index: int = -100) -> int | None:
    """Index of the first trained position after the causal shift, or `None` when there is none."""
    return next((i for i in range(1, len(labels)) if labels[i] != ignore_index), None)
