"""Conversation shapes users bring: content parts, ShareGPT rows, `conversations` columns, unknown roles, empty
replies; each turned into messages whose assistant turns (and only those) are trained."""

from __future__ import annotations

import pytest
from datasets import Dataset

from trl_masked_sft import (
    DatasetFormatError,
    DatasetTypeError,
    MaskingOptions,
    PreparationPipeline,
    UnsupervisedRowsError,
)
from trl_masked_sft.chat.conversations import (
    content_text,
    conversation_of,
    is_empty_reply,
    message_spans,
    template_roles,
    to_messages,
)
from trl_masked_sft.chat.labels import EMPTY_COMPLETION, chat_labels
from trl_masked_sft.tiny import CHATML_TEMPLATE, build_tiny_tokenizer

SHAREGPT = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "What is 2 kg in grams?"},
    {"from": "gpt", "value": "2000"},
    {"from": "human", "value": "And 3 kg?"},
    {"from": "gpt", "value": "3000"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def trained(tokenizer, mask) -> str:
    return tokenizer.decode([t for t, label in zip(mask.input_ids, mask.labels, strict=True) if label != -100])


def test_content_parts_train_their_text_not_the_list(tokenizer):
    """`[{"type": "text", "text": ...}]` content renders (and trains) as its text, never as a Python list."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is 2 kg "}, {"type": "text", "text": "in grams?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "2000"}]},
    ]
    assert to_messages(messages)[0]["content"] == "What is 2 kg in grams?"
    mask = chat_labels(tokenizer, messages)
    assert trained(tokenizer, mask) == "2000<|im_end|>"
    assert "'type'" not in tokenizer.decode(mask.input_ids)


def test_sharegpt_rows_train_the_gpt_turns_only(tokenizer):
    """ShareGPT `from`/`value` become roles and content: human turns are masked, gpt turns trained."""
    messages = to_messages({"conversations": SHAREGPT})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages][2] == "2000" and "from" not in messages[0]
    assert trained(tokenizer, chat_labels(tokenizer, messages)) == "2000<|im_end|>3000<|im_end|>"


def test_a_conversations_column_of_role_and_content_is_read_like_messages():
    """A `conversations` column holding role/content dicts is taken as is, extra keys included."""
    row = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "x": 1}]}
    assert to_messages(row) == row["conversations"]


def test_an_unknown_role_is_named_with_the_roles_the_template_handles():
    """`bot` is neither ShareGPT nor a template role: the error names it, its message, and the accepted roles."""
    with pytest.raises(DatasetFormatError, match=r"Row 7 .*message 1 has role 'bot'.*handles: assistant, developer"):
        to_messages(
            [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}],
            roles=template_roles("{% if message['role'] == 'developer' %}{% endif %}"),
            row=7,
        )


def test_template_roles_are_read_from_role_comparisons():
    """Roles the template compares `role` with (`==` and `in [...]`) join the standard four."""
    template = "{% if m.role == 'ipython' %}{% elif m['role'] in ['observation', 'user'] %}{% endif %}"
    assert template_roles(template) == ("assistant", "ipython", "observation", "system", "tool", "user")
    assert template_roles(CHATML_TEMPLATE) == ("assistant", "system", "tool", "user")


def test_a_message_without_a_role_is_refused():
    """No `role` and no ShareGPT `from`: the error says which message and what to give."""
    with pytest.raises(DatasetFormatError, match="message 0 has no `role`"):
        to_messages([{"content": "Hi"}])


def test_a_conversation_that_is_not_a_list_of_dicts_is_refused():
    """A string where a conversation should be is a type error naming the value."""
    with pytest.raises(DatasetTypeError, match="must be a list of"):
        to_messages({"messages": "Hi there"})


def test_content_of_another_type_is_refused():
    """A number as content is neither text nor parts."""
    with pytest.raises(DatasetTypeError, match="message 0 \\(role 'user'\\) has `content` of type int"):
        to_messages([{"role": "user", "content": 3}])


def test_a_row_without_a_conversation_column_is_refused():
    """A dict row needs `messages` or `conversations`."""
    with pytest.raises(DatasetFormatError, match="no `messages` or `conversations` column"):
        to_messages({"text": "Hi"})


def test_an_empty_reply_is_flagged_as_an_empty_completion(tokenizer):
    """A reply with no content trains nothing (not its end-of-turn token alone) and is counted by the audit."""
    for content in ("", None, "  ", [{"type": "text", "text": ""}]):
        mask = chat_labels(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}])
        assert mask.problem.startswith(EMPTY_COMPLETION) and mask.row_reason.startswith(EMPTY_COMPLETION)
        assert all(label == -100 for label in mask.labels)  # a `None` content may not even render


def test_an_empty_reply_among_others_is_skipped_and_noted(tokenizer):
    """The other replies still train; the note names the empty one."""
    messages = to_messages({"conversations": SHAREGPT})
    messages[2]["content"] = ""
    mask = chat_labels(tokenizer, messages)
    assert mask.problem is None and trained(tokenizer, mask) == "3000<|im_end|>"
    assert "empty assistant reply (message 2)" in mask.note


def test_tool_calls_and_reasoning_make_a_reply_non_empty():
    """A reply holding only tool calls or reasoning has something to train."""
    assert not is_empty_reply({"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]})
    assert not is_empty_reply({"role": "assistant", "content": "", "reasoning_content": "Think."})
    assert is_empty_reply({"role": "assistant", "content": None})


def test_prompt_completion_rows_train_from_the_completion():
    """Prompt/completion rows given as messages: the conversation is both, training starts at the completion."""
    row = {"prompt": [{"from": "human", "value": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}
    messages, first = conversation_of(row)
    assert first == 1 and [m["role"] for m in messages] == ["user", "assistant"]
    assert conversation_of({"messages": [{"role": "user", "content": "Hi"}]})[1] == 0


def test_content_text_joins_text_parts_and_reads_none_as_empty():
    """Text parts are joined without a separator, as templates that read parts render them."""
    assert content_text([{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]) == "ab"
    assert content_text(None) == ""


def test_message_spans_skip_the_header_and_find_stripped_text():
    """A reply starts after the assistant header; text the template strips is still found; a missing one is None."""
    text = "<u>Q</u><a>A</a><u>gone</u>"
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": " A "},
        {"role": "user", "content": "not rendered"},
    ]
    spans = message_spans(text, messages, header="<a>")
    assert spans[0] == (3, 3, 4) and spans[1] == (11, 11, 12) and spans[2] is None


def _supervised_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])


def test_the_pipeline_trains_the_gpt_turns_of_sharegpt_rows(tokenizer):
    """A `conversations` column of ShareGPT turns prepares like messages: only the gpt replies are trained."""
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare([{"conversations": SHAREGPT}])
    assert _supervised_text(tokenizer, prepared.dataset[0]) == "2000<|im_end|>3000<|im_end|>"


def test_the_pipeline_trains_the_text_of_content_parts(tokenizer):
    """Messages whose content is a list of text parts train the reply's text."""
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "2 kg in grams?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2000"}]},
        ]
    }
    assert _supervised_text(tokenizer, PreparationPipeline(tokenizer, MaskingOptions()).prepare([row]).dataset[0]) == (
        "2000<|im_end|>"
    )


def test_the_pipeline_counts_an_empty_reply_as_an_empty_completion(tokenizer):
    """The audit names the row with an empty reply, and the default policy stops on it."""
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
    ]
    audited = PreparationPipeline(tokenizer, MaskingOptions()).prepare(rows, enforce=False)
    assert audited.report.unsupervised_rows[1].startswith(EMPTY_COMPLETION)
    with pytest.raises(UnsupervisedRowsError, match="empty completion"):
        PreparationPipeline(tokenizer, MaskingOptions()).prepare(rows)


def test_the_pipeline_names_a_role_the_template_does_not_handle(tokenizer):
    """Replies under another role (`bot`) leave nothing to train: the audit names the role and the roles the template
    handles."""
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}]
    with pytest.raises(
        UnsupervisedRowsError,
        match="no assistant turn to train \\(roles the template doesn't handle: 'bot'; it handles: assistant",
    ):
        PreparationPipeline(tokenizer, MaskingOptions()).prepare(rows)


def test_a_row_the_template_renders_anyway_keeps_an_odd_role_as_context(tokenizer):
    """ChatML renders any role: a `developer` turn is masked context, the reply is trained."""
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    mask = chat_labels(tokenizer, [*messages, {"role": "assistant", "content": "Hello"}])
    assert mask.problem is None and trained(tokenizer, mask) == "Hello<|im_end|>"


def test_a_streamed_empty_reply_stops_the_run_when_read(tokenizer):
    """Streaming rows are checked as they are read: the empty reply's row is named as an empty completion."""
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]}
        for content in ("Hello", "")
    ]
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare(Dataset.from_list(rows).to_iterable_dataset())
    with pytest.raises(UnsupervisedRowsError, match="Row 1 of the streamed train dataset .*empty completion"):
        list(prepared.dataset)
