"""The end-of-turn rule on literal token lists: which tokens after a reply are trained (`end_of_turn.settle`)."""

from __future__ import annotations

from trl_masked_sft.end_of_turn import TurnFacts, settle

BOS, EOS, SPACE, NEXT = 1, 2, 9, 7


def _facts(closing=(EOS,), stop=(BOS,)) -> TurnFacts:
    return TurnFacts("", tuple(closing), frozenset(stop), frozenset(stop))


def _blank(ids):
    return lambda i: ids[i] == SPACE


def test_the_closing_after_a_space_is_trained_with_the_space_and_the_next_bos_is_not():
    """Llama-2: reply, ' ', `</s>`, `<s>`: the end of turn is the space and the eos."""
    ids = [5, 6, SPACE, EOS, BOS, NEXT]
    assert settle(ids, 2, (2, 2), len(ids), _facts(), _blank(ids)) == (2, 4)


def test_bos_equal_to_eos_trains_one_token():
    """bos == eos: the first of the two is the reply's stop, the second opens the next turn."""
    ids = [5, 6, EOS, EOS, NEXT]
    assert settle(ids, 2, (2, 4), len(ids), _facts(stop=(EOS,)), _blank(ids)) == (2, 3)


def test_a_closing_later_in_the_turn_ends_it_there():
    """A tool call between the text and the stop: the way's span is cut right after the closing."""
    ids = [5, 6, 40, 41, EOS, BOS, NEXT]
    assert settle(ids, 2, (4, 6), len(ids), _facts(), _blank(ids)) == (4, 5)


def test_without_a_closing_the_proposed_span_stops_before_a_turn_opening():
    """A template that prints no stop: nothing of the next turn's opening is kept."""
    ids = [5, 6, 30, BOS, NEXT]
    assert settle(ids, 2, (2, 4), len(ids), _facts(closing=()), _blank(ids)) == (2, 3)


def test_the_closing_is_never_taken_from_the_next_message():
    """A closing past `bound` (the next message's first token) is not this reply's."""
    ids = [5, 6, NEXT, EOS]
    assert settle(ids, 2, (2, 2), 3, _facts(), _blank(ids)) == (2, 2)
