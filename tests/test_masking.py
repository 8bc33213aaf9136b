"""Tests for the pure masking functions: token ids in, labels out, checked on literal lists."""

from __future__ import annotations

import pytest

from trl_masked_sft.masking import (
    apply_keep_mask,
    count_supervised,
    find_subsequence,
    find_template,
    find_template_in_text,
    first_supervised,
    response_spans,
    spans_to_labels,
    template_variants,
)
from trl_masked_sft.tiny import build_tiny_tokenizer

IGNORE = -9


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """The byte-level BPE of `trl_masked_sft.tiny` (GPT-2 style: a space merges into the next word)."""
    return build_tiny_tokenizer()


# find_subsequence


def test_find_subsequence_returns_every_start_position():
    """Every position where `sub` occurs is returned, in order."""
    assert find_subsequence([5, 7, 8, 5, 7, 8, 9], [5, 7, 8]) == [0, 3]


def test_find_subsequence_returns_overlapping_occurrences():
    """Occurrences that overlap are all reported."""
    assert find_subsequence([4, 4, 4, 4], [4, 4]) == [0, 1, 2]


def test_find_subsequence_ignores_positions_before_start():
    """Only positions `>= start` are searched."""
    assert find_subsequence([5, 7, 5, 7, 5, 7], [5, 7], start=1) == [2, 4]
    assert find_subsequence([5, 7, 5, 7], [5, 7], start=3) == []


def test_find_subsequence_matches_a_sub_at_the_very_end():
    """A match ending on the last element is found (no off-by-one at the end)."""
    assert find_subsequence([1, 2, 3, 4], [3, 4]) == [2]


def test_find_subsequence_with_empty_sub_matches_nowhere():
    """An empty `sub` matches nowhere instead of everywhere."""
    assert find_subsequence([1, 2, 3], []) == []


def test_find_subsequence_longer_than_sequence_matches_nowhere():
    """A `sub` longer than `seq` cannot occur."""
    assert find_subsequence([1, 2], [1, 2, 3]) == []


def test_find_subsequence_requires_the_whole_sub_not_only_its_first_token():
    """A position matching only the first token of `sub` is not a match."""
    assert find_subsequence([5, 6, 5, 7], [5, 7]) == [2]


def test_find_subsequence_accepts_tuples_and_ranges():
    """Any sequence of ints works, not only lists."""
    assert find_subsequence(range(10), (3, 4, 5)) == [3]


# template_variants


def test_template_variants_uses_token_ids_as_given():
    """A template given as token ids is the only variant, unchanged and as a list."""
    assert template_variants(None, (17, 3, 42)) == [[17, 3, 42]]


def test_template_variants_of_a_string_includes_its_tokenization_alone(tiny_tokenizer):
    """The template tokenized on its own is always a variant."""
    variants = template_variants(tiny_tokenizer, "### Answer:")
    assert _ids(tiny_tokenizer, "### Answer:") in variants


def test_template_variants_covers_the_form_a_template_takes_after_a_newline(sp_tokenizer):
    """A template that tokenizes differently after a newline than alone has that in-context form as a variant."""
    alone = _ids(sp_tokenizer, "### Answer:")
    newline = _ids(sp_tokenizer, "\n")
    in_context = _ids(sp_tokenizer, "\n### Answer:")[len(newline) :]
    assert _ids(sp_tokenizer, "\n### Answer:")[: len(newline)] == newline
    assert in_context != alone, "fixture no longer shows the in-context difference"

    variants = template_variants(sp_tokenizer, "### Answer:")

    assert alone in variants
    assert in_context in variants


def test_template_variants_in_context_form_is_found_in_a_real_row(sp_tokenizer):
    """In a row where the template follows a newline, the variants locate it although its alone form is absent."""
    row = _ids(sp_tokenizer, "What is 2+2?\n### Answer: 4")
    alone = _ids(sp_tokenizer, "### Answer:")
    assert find_subsequence(row, alone) == []

    spans = find_template(row, template_variants(sp_tokenizer, "### Answer:"))

    assert len(spans) == 1
    start, end = spans[0]
    assert sp_tokenizer.decode(row[end:]).strip() == "4"
    assert "### Answer:" in sp_tokenizer.decode(row[start:end])


def test_template_variants_are_unique_and_longest_first(sp_tokenizer, tiny_tokenizer):
    """Variants hold no duplicates and no empty sequence, and are sorted longest first."""
    for tokenizer in (sp_tokenizer, tiny_tokenizer):
        for template in ("### Answer:", "Answer:", "<answer>", "?"):
            variants = template_variants(tokenizer, template)
            assert variants
            assert all(variants)
            assert len({tuple(v) for v in variants}) == len(variants)
            assert [len(v) for v in variants] == sorted((len(v) for v in variants), reverse=True)


def test_template_tokenizes_differently_after_a_space_than_alone(tiny_tokenizer):
    """With a byte-level BPE, "Answer:" after a space merges the space into its first token: the ids differ."""
    alone = _ids(tiny_tokenizer, "Answer:")
    after_space = _ids(tiny_tokenizer, "x Answer:")[len(_ids(tiny_tokenizer, "x")) :]
    assert after_space != alone
    assert find_subsequence(_ids(tiny_tokenizer, "x Answer: no"), alone) == []


# find_template


def test_find_template_returns_start_and_end_of_each_occurrence():
    """Each occurrence gives a (start, end) span, end exclusive."""
    assert find_template([1, 8, 9, 2, 8, 9, 3], [[8, 9]]) == [(1, 3), (4, 6)]


def test_find_template_prefers_the_longest_variant_at_a_position():
    """Where two variants start at the same position, the longest one decides the span (variants longest first)."""
    assert find_template([1, 8, 9, 7, 2], [[8, 9, 7], [8, 9]]) == [(1, 4)]


def test_find_template_prefers_the_longest_variant_whatever_the_order_given():
    """The longest variant wins at a position even when a shorter one is listed first."""
    assert find_template([1, 8, 9, 7, 2], [[8, 9], [8, 9, 7]]) == [(1, 4)]


def test_find_template_returns_non_overlapping_spans():
    """A variant starting inside an earlier span is skipped."""
    assert find_template([8, 9, 8, 9, 8], [[8, 9, 8]]) == [(0, 3)]
    assert find_template([1, 8, 9, 7, 2], [[8, 9, 7], [9, 7, 2]]) == [(1, 4)]


def test_find_template_without_a_match_returns_no_span():
    """No variant in the row gives an empty list."""
    assert find_template([1, 2, 3], [[4, 5], [6]]) == []


def test_find_template_spans_are_sorted_by_start():
    """Spans from different variants come back in row order."""
    assert find_template([6, 0, 4, 5, 0, 6], [[4, 5], [6]]) == [(0, 1), (2, 4), (5, 6)]


# find_template_in_text


def test_find_template_in_text_covers_the_token_merged_with_a_preceding_space(tiny_tokenizer):
    """When the template's first characters merged with a space, the span starts at that merged token."""
    ids = _ids(tiny_tokenizer, "x Answer: no")
    spans = find_template_in_text(tiny_tokenizer, ids, "Answer:")
    assert len(spans) == 1
    start, end = spans[0]
    assert tiny_tokenizer.decode(ids[start:end]) == " Answer:"
    assert tiny_tokenizer.decode(ids[end:]) == " no"


def test_find_template_in_text_finds_every_occurrence(tiny_tokenizer):
    """Each occurrence of the template in the decoded row gives a span, in order."""
    ids = _ids(tiny_tokenizer, "a Answer: b Answer: c")
    spans = find_template_in_text(tiny_tokenizer, ids, "Answer:")
    assert [tiny_tokenizer.decode(ids[end:]) for _, end in spans] == [" b Answer: c", " c"]
    assert all(tiny_tokenizer.decode(ids[s:e]).strip() == "Answer:" for s, e in spans)


def test_find_template_in_text_masks_a_token_shared_with_the_completion(tiny_tokenizer):
    """A template ending inside a token extends its span over that token, so it is masked, not half-trained."""
    ids = _ids(tiny_tokenizer, "x Answer: no")
    (start, end), *_ = find_template_in_text(tiny_tokenizer, ids, "Answe")
    assert tiny_tokenizer.decode(ids[start:end]) == " Answer"


def test_find_template_in_text_without_the_text_returns_no_span(tiny_tokenizer):
    """A template absent from the decoded row gives an empty list."""
    assert find_template_in_text(tiny_tokenizer, _ids(tiny_tokenizer, "Paris is nice"), "Answer:") == []


# response_spans


def test_response_spans_without_a_response_is_none():
    """No response template in the row gives `None` (nothing could be trained)."""
    assert response_spans(10, []) is None
    assert response_spans(10, [], [(0, 2)]) is None


def test_response_spans_with_single_template_trains_after_the_last_occurrence():
    """Without an instruction template only the text after the *last* response template is trained."""
    assert response_spans(12, [(1, 3), (6, 8)]) == [(8, 12)]


def test_response_spans_with_instruction_trains_every_response_up_to_the_next_instruction():
    """With an instruction template every response is trained, each up to the next instruction template."""
    instructions = [(0, 2), (7, 9)]
    responses = [(4, 5), (11, 12)]
    assert response_spans(15, responses, instructions) == [(5, 7), (12, 15)]


def test_response_spans_ignores_instructions_before_the_response():
    """An instruction template before a response does not end it; the next one after it does."""
    assert response_spans(20, [(6, 8)], [(0, 2), (3, 5), (14, 16)]) == [(8, 14)]


def test_response_spans_skips_a_response_followed_directly_by_an_instruction():
    """An empty response (instruction right after the template) yields no span."""
    assert response_spans(10, [(2, 4), (6, 7)], [(0, 1), (4, 5)]) == [(7, 10)]


def test_response_spans_last_response_runs_to_the_end_of_the_row():
    """The last response with no instruction after it is trained to the end of the row."""
    assert response_spans(9, [(3, 4)], [(0, 2)]) == [(4, 9)]


# spans_to_labels


def test_spans_to_labels_keeps_labels_inside_spans_and_ignores_the_rest():
    """Positions inside a span keep their label; all others get `ignore_index`."""
    assert spans_to_labels([10, 11, 12, 13, 14, 15], [(1, 3), (4, 5)], IGNORE) == [IGNORE, 11, 12, IGNORE, 14, IGNORE]


def test_spans_to_labels_keeps_an_ignore_value_already_inside_a_span():
    """An ignore value the labels already carry stays, even inside a trained span."""
    assert spans_to_labels([10, -100, IGNORE, 13], [(0, 4)], IGNORE) == [10, -100, IGNORE, 13]


def test_spans_to_labels_clips_a_span_past_the_end():
    """A span reaching past the row keeps the labels up to the end and does not grow the row."""
    assert spans_to_labels([10, 11, 12], [(1, 9)], IGNORE) == [IGNORE, 11, 12]


def test_spans_to_labels_without_spans_ignores_everything():
    """No span means no trained position."""
    assert spans_to_labels([10, 11, 12], [], IGNORE) == [IGNORE, IGNORE, IGNORE]


# apply_keep_mask


def test_apply_keep_mask_ignores_positions_where_keep_is_zero():
    """A 0 in `keep` masks the position; a 1 keeps its label."""
    assert apply_keep_mask([10, 11, 12, 13], [0, 1, 0, 1], IGNORE) == [IGNORE, 11, IGNORE, 13]


def test_apply_keep_mask_never_unmasks_a_position():
    """An ignored label stays ignored where `keep` is 1."""
    assert apply_keep_mask([IGNORE, -100, 12], [1, 1, 1], IGNORE) == [IGNORE, -100, 12]


def test_apply_keep_mask_accepts_booleans():
    """`keep` may be booleans as well as 0/1."""
    assert apply_keep_mask([10, 11], [True, False], IGNORE) == [10, IGNORE]


def test_apply_keep_mask_rejects_a_mask_of_another_length():
    """A `keep` mask whose length differs from the labels raises instead of silently truncating."""
    with pytest.raises(ValueError, match="zip"):
        apply_keep_mask([10, 11, 12], [1, 1], IGNORE)


# count_supervised / first_supervised


def test_count_supervised_never_counts_position_zero():
    """Position 0 is never a target after the causal shift, so a label there does not count."""
    assert count_supervised([10, IGNORE, IGNORE], IGNORE) == 0
    assert count_supervised([10, 11, IGNORE, 13], IGNORE) == 2


def test_count_supervised_uses_the_given_ignore_index():
    """Only labels equal to `ignore_index` are unsupervised; -100 counts when another value is the ignore index."""
    assert count_supervised([0, -100, IGNORE, 5], IGNORE) == 2
    assert count_supervised([0, -100, IGNORE, 5], -100) == 2
    assert count_supervised([0, -100, -100, 5]) == 1


def test_count_supervised_of_an_empty_or_single_label_row_is_zero():
    """Rows too short to have a target after the shift count nothing."""
    assert count_supervised([], IGNORE) == 0
    assert count_supervised([7], IGNORE) == 0


def test_first_supervised_skips_position_zero():
    """The first trained position is searched from index 1."""
    assert first_supervised([10, IGNORE, IGNORE, 13, 14], IGNORE) == 3
    assert first_supervised([10, 11], IGNORE) == 1


def test_first_supervised_is_none_when_only_position_zero_is_labelled():
    """A row whose only label is at position 0 has no supervised position."""
    assert first_supervised([10, IGNORE, IGNORE], IGNORE) is None
    assert first_supervised([], IGNORE) is None


def test_first_supervised_uses_the_given_ignore_index():
    """-100 is a trained label when the ignore index is another value."""
    assert first_supervised([IGNORE, -100, 3], IGNORE) == 1
    assert first_supervised([IGNORE, -100, 3], -100) == 2
