"""The end-of-turn rule on literal token lists: which tokens after a reply are trained (`end_of_turn.settle`)."""

from __future__ import annotations

from trl_masked_sft.chat.end_of_turn import Stops, TurnFacts, head_end, settle

BOS, EOS, SPACE, NEXT, USER, OBSERVATION, ASSISTANT = 1, 2, 9, 7, 11, 12, 13
#: The default stop set (the eos and the template's closing), and GLM-4.5's (eos, `<|user|>`, `<|observation|>`).
DEFAULT = Stops(frozenset({EOS}), lenient=True)
GLM = Stops(frozenset({EOS, USER, OBSERVATION}))


def _facts(closing=(EOS,), stop=(BOS,)) -> TurnFacts:
    return TurnFacts("", tuple(closing), frozenset(stop), frozenset(stop))


def _blank(ids):
    return lambda i: ids[i] == SPACE


def test_the_closing_after_a_space_is_trained_with_the_space_and_the_next_bos_is_not():
    """Llama-2: reply, ' ', `</s>`, `<s>`: the end of turn is the space and the eos."""
    ids = [5, 6, SPACE, EOS, BOS, NEXT]
    assert settle(ids, 2, (2, 2), len(ids), _facts(), _blank(ids), DEFAULT) == (2, 4)


def test_bos_equal_to_eos_trains_one_token():
    """bos == eos: the first of the two is the reply's stop, the second opens the next turn."""
    ids = [5, 6, EOS, EOS, NEXT]
    assert settle(ids, 2, (2, 4), len(ids), _facts(stop=(EOS,)), _blank(ids), DEFAULT) == (2, 3)


def test_a_closing_later_in_the_turn_ends_it_there():
    """A tool call between the text and the stop: trained with the reply, the turn ends right after the closing."""
    ids = [5, 6, 40, 41, EOS, BOS, NEXT]
    assert settle(ids, 2, (4, 6), len(ids), _facts(), _blank(ids), DEFAULT) == (4, 5)


def test_without_a_closing_the_proposed_span_stops_before_a_turn_opening():
    """A template that prints no stop: nothing of the next turn's opening is kept."""
    ids = [5, 6, 30, BOS, NEXT]
    assert settle(ids, 2, (2, 4), len(ids), _facts(closing=()), _blank(ids), DEFAULT) == (2, 3)


def test_the_closing_is_never_taken_from_the_next_message():
    """A closing past `bound` (the next message's first token) is not this reply's."""
    ids = [5, 6, NEXT, EOS]
    assert settle(ids, 2, (2, 2), 3, _facts(), _blank(ids), DEFAULT) == (2, 2)


def test_the_next_message_opener_in_the_stop_set_is_the_stop_and_nothing_after_it():
    """GLM: reply, `<|user|>`, `\n`, text: `<|user|>` ends the reply (it is a stop), its newline does not."""
    ids = [5, 6, USER, SPACE, NEXT]
    facts = _facts(closing=(), stop=(USER, ASSISTANT))
    assert settle(ids, 2, (2, 2), 4, facts, _blank(ids), GLM) == (2, 3)


def test_a_tool_call_turn_ends_with_the_observation_opener():
    """GLM: `<tool_call>...</tool_call>` then `<|observation|>`: the tool call and `<|observation|>` are trained."""
    ids = [5, 40, 41, OBSERVATION, SPACE, NEXT]
    facts = _facts(closing=(), stop=(USER, OBSERVATION, ASSISTANT))
    assert settle(ids, 1, (1, 3), 5, facts, _blank(ids), GLM) == (3, 4)


def test_a_token_after_the_reply_that_is_not_a_stop_is_never_trained():
    """GLM-Edge: `<|assistant|>` after the last reply is not in the stop set: no stop, nothing trained after it."""
    ids = [5, 6, ASSISTANT]
    assert settle(ids, 2, (2, 3), 3, _facts(closing=(), stop=(ASSISTANT,)), _blank(ids), GLM) == (2, 2)


def test_only_one_stop_is_trained_and_not_the_newline_after_it():
    """Gemma-3/ChatML: `<end_of_turn>` `\n` (a blank): the stop is trained, the newline after it is not."""
    ids = [5, 6, EOS, SPACE, BOS]
    assert settle(ids, 2, (2, 4), len(ids), _facts(), _blank(ids), GLM) == (2, 3)


def test_the_reply_starts_after_the_whole_generation_prompt():
    """Qwen3 without thinking: the generation prompt holds an empty think block, so the reply starts after it."""
    facts = TurnFacts(
        "<|im_start|>assistant\n", (), frozenset(), frozenset(), None, "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>"
    at = text.index("<|im_start|>assistant")
    assert text[head_end(text, at + len(facts.header), facts) :] == "Hello<|im_end|>"
    assert text[head_end(text, at, facts) :] == "Hello<|im_end|>"
