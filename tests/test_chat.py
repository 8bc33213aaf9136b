"""Assistant-only masks for conversations under the chat templates of the major families, without markers."""

from __future__ import annotations

import pytest
from datasets import Dataset
from template_families import byte_level_tokenizer, family_tokenizer, trained_runs

from trl_masked_sft import MaskedSFTTrainer, UnsupervisedRowsError
from trl_masked_sft.chat.labels import END_OF_TURN, SYSTEM, TOOL, USER, chat_labels, is_trained
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

# Templates written for these tests in the layout of each family (not copied from any model repository).
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ '<bos>' }}{% set sys = messages[0]['content'] + '\n\n' if messages and messages[0]['role'] == 'system' "
    "else '' %}{% for m in messages if m['role'] != 'system' %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL = (
    "{{ '<|bos|>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + '<|eos|>' }}{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHATML_MARKED = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Rewrites the replies (upper case) and marks the last message, so no way can locate the turns.
UNREADABLE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper }}{% if loop.last %} END{% endif %}\n"
    "{% endfor %}"
)
EOT = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
    "mistral": "<|eos|>",
    "phi3": "<|end|>",
}
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "mistral": MISTRAL, "phi3": PHI3}

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "How many grams in 2 kg?"},
    {"role": "assistant", "content": "2000 grams."},
    {"role": "user", "content": "And in 3 kg?"},
    {"role": "assistant", "content": "3000 grams."},
]


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = build_tiny_tokenizer()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<bos>"]
    specials += ["<start_of_turn>", "<end_of_turn>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    specials += ["<|im_start|>", "<|im_end|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def trained_text(tokenizer, mask) -> list[str]:
    """The trained pieces of a conversation, one string per contiguous trained run."""
    runs, current = [], []
    for token, reason in zip(mask.input_ids, mask.reasons, strict=True):
        if is_trained(reason):
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_every_assistant_turn_and_its_end_of_turn_token_is_trained(chat_tokenizer, family):
    """For each family's template: exactly the assistant replies plus their end-of-turn token are trained."""
    mask = chat_labels(chat_tokenizer, CONVERSATION, chat_template=TEMPLATES[family])
    assert mask.problem is None
    eot = EOT[family]
    assert trained_text(chat_tokenizer, mask) == [f"2000 grams.{eot}", f"3000 grams.{eot}"]
    assert all((label == -100) != is_trained(reason) for label, reason in zip(mask.labels, mask.reasons, strict=True))


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_end_of_turn_token_can_be_left_untrained(chat_tokenizer, family):
    """`train_eot=False` trains the replies without their end-of-turn token, marked with its own reason."""
    mask = chat_labels(chat_tokenizer, CONVERSATION, chat_template=TEMPLATES[family], train_eot=False)
    assert trained_text(chat_tokenizer, mask) == ["2000 grams.", "3000 grams."]
    assert END_OF_TURN in mask.reasons


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_last_turn_only_masks_earlier_replies(chat_tokenizer, family):
    """`assistant_turns='last'` trains the final reply only."""
    mask = chat_labels(chat_tokenizer, CONVERSATION, chat_template=TEMPLATES[family], assistant_turns="last")
    assert trained_text(chat_tokenizer, mask) == [f"3000 grams.{EOT[family]}"]


def test_system_user_and_tool_turns_are_masked_with_their_reason(chat_tokenizer):
    """Each masked token says which turn it belongs to."""
    conversation = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "T"},
        {"role": "assistant", "content": "done"},
    ]
    mask = chat_labels(chat_tokenizer, conversation, chat_template=CHATML)
    tokens = chat_tokenizer.convert_ids_to_tokens(mask.input_ids)
    by_reason = {
        reason: "".join(t for t, r in zip(tokens, mask.reasons, strict=True) if r == reason)
        for reason in (SYSTEM, USER, TOOL)
    }
    assert "S" in by_reason[SYSTEM] and "U" in by_reason[USER] and "T" in by_reason[TOOL]
    assert trained_text(chat_tokenizer, mask) == ["call<|im_end|>", "done<|im_end|>"]


def test_prefix_diff_agrees_with_generation_markers(chat_tokenizer):
    """On a template with `{% generation %}` markers, the prefix-diff mask equals the marker mask."""
    ours = chat_labels(chat_tokenizer, CONVERSATION, chat_template=CHATML)
    marked = chat_labels(chat_tokenizer, CONVERSATION, chat_template=CHATML_MARKED)
    assert marked.problem is None  # checked against the markers inside
    out = chat_tokenizer.apply_chat_template(
        CONVERSATION, chat_template=CHATML_MARKED, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert [int(label != -100) for label in marked.labels] == list(out["assistant_masks"])
    assert ours.labels == marked.labels


def test_a_template_that_renders_the_last_turn_differently_still_trains_the_replies(chat_tokenizer):
    """Text the template adds after the last turn moves when a prefix is rendered alone: the prefix diff can't work,
    locating each reply's text in the whole conversation can; the note says the first reply has no end token, and the
    last gets the eos right after it (before the template's ` END`), so every trained conversation ends with a stop."""
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %}{{ ' END' }}{% endif %}\n{% endfor %}"
    mask = chat_labels(chat_tokenizer, CONVERSATION, chat_template=template)
    assert mask.problem is None and mask.method == "offsets"
    assert trained_text(chat_tokenizer, mask) == ["2000 grams.", "3000 grams.<|eos|>"]
    assert "no end-of-turn token" in mask.note


def test_a_template_no_way_can_read_is_reported(chat_tokenizer):
    """When no way locates the turns, the row is reported with every label masked, not trained wrongly."""
    mask = chat_labels(chat_tokenizer, CONVERSATION, chat_template=UNREADABLE)
    assert mask.problem and "render differently" in mask.problem
    assert set(mask.labels) == {-100}


def test_conversation_without_assistant_turn_is_reported(chat_tokenizer):
    """A conversation with no assistant reply has nothing to train and says so."""
    mask = chat_labels(chat_tokenizer, CONVERSATION[:2], chat_template=CHATML)
    assert mask.problem == "no assistant turn to train"


def _conversations(n: int = 8) -> Dataset:
    rows = []
    for i in range(n):
        rows.append(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": f"{4 * i}"},
            ]
        )
    return Dataset.from_dict({"messages": rows})


def test_trainer_masks_multi_turn_chat_without_markers_like_a_marker_template(chat_tokenizer, make_config):
    """A template without generation markers trains the same tokens as its marker-based twin."""
    labels = {}
    for name, template in (("plain", CHATML), ("marked", CHATML_MARKED)):
        chat_tokenizer.chat_template = template
        trainer = MaskedSFTTrainer(
            build_tiny_model(chat_tokenizer),
            args=make_config(max_length=256),
            train_dataset=_conversations(),
            processing_class=chat_tokenizer,
        )
        labels[name] = trainer.train_dataset["labels"]
    assert labels["plain"] == labels["marked"]
    assert any(label != -100 for label in labels["plain"][0])
    trainer.train()


def test_trainer_assistant_only_loss_works_with_an_unknown_template(chat_tokenizer, make_config):
    """`assistant_only_loss=True` no longer needs markers or a known model family."""
    chat_tokenizer.chat_template = PHI3
    trainer = MaskedSFTTrainer(
        build_tiny_model(chat_tokenizer),
        args=make_config(max_length=256, assistant_only_loss=True),
        train_dataset=_conversations(),
        processing_class=chat_tokenizer,
    )
    row = trainer.train_dataset[1]
    kept = chat_tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    assert kept == "2<|end|>4<|end|>"


def test_trainer_reports_conversations_it_cannot_locate(chat_tokenizer, make_config):
    """A chat row whose turns can't be located stops the run with the reason, instead of masking it silently."""
    chat_tokenizer.chat_template = UNREADABLE
    with pytest.raises(UnsupervisedRowsError, match="chat turns not located"):
        MaskedSFTTrainer(
            build_tiny_model(chat_tokenizer),
            args=make_config(max_length=256),
            train_dataset=_conversations(),
            processing_class=chat_tokenizer,
        )


# The end-of-turn rule (docs/chat_templates.md): what the model must generate to end its reply is trained, the next
# turn's bos or header never is, even when it is the same token as the eos.
TWO_REPLIES = CONVERSATION[1:]
#: Mistral-style, bos before every user turn: `...</s><s>[INST]...`, with `<s>` and `</s>` two tokens.
MISTRAL_BOS_PER_TURN = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
#: Prints bos and eos around every turn: `...</s><s>user...`; on a GPT-2-style tokenizer both are `<|endoftext|>`.
BOS_AND_EOS = (
    "{% for m in messages %}{{ bos_token + m['role'] + '\n' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}{% endif %}"
)


def test_llama2_chat_trains_the_eos_after_the_space():
    """Llama-2's template ends each reply with `' ' + eos_token`: the `</s>` is what the model must generate."""
    tokenizer = family_tokenizer("llama-2-chat")
    mask = chat_labels(tokenizer, TWO_REPLIES)
    assert mask.problem is None
    assert trained_runs(tokenizer, mask) == [" 2000 grams. </s>", " 3000 grams. </s>"]


def test_mistral_style_next_turn_bos_is_not_trained():
    """`</s><s>[INST]`: the reply's `</s>` is trained, the next turn's `<s>` is not."""
    tokenizer = byte_level_tokenizer("<s>", "</s>")
    mask = chat_labels(tokenizer, TWO_REPLIES, chat_template=MISTRAL_BOS_PER_TURN)
    assert mask.problem is None
    assert trained_runs(tokenizer, mask) == ["2000 grams.</s>", "3000 grams.</s>"]


@pytest.mark.parametrize("method", [None, "offsets", "prefix diff"])
def test_bos_equal_to_eos_trains_one_stop_token_per_reply(method):
    """GPT-2-style bos == eos == `<|endoftext|>`: each reply trains the one it ends with, not the next turn's."""
    tokenizer = byte_level_tokenizer("<|endoftext|>", "<|endoftext|>")
    mask = chat_labels(tokenizer, TWO_REPLIES, chat_template=BOS_AND_EOS, methods=(method,) if method else None)
    assert mask.problem is None
    assert trained_runs(tokenizer, mask) == ["2000 grams.<|endoftext|>", "3000 grams.<|endoftext|>"]


@pytest.mark.parametrize("method", [None, "offsets", "prefix diff"])
def test_llama2_rule_holds_for_every_way_of_locating_replies(method):
    """The end-of-turn rule is one rule: the content offsets and the prefix diff agree on Llama-2."""
    tokenizer = family_tokenizer("llama-2-chat")
    mask = chat_labels(tokenizer, TWO_REPLIES, methods=(method,) if method else None)
    assert trained_runs(tokenizer, mask) == [" 2000 grams. </s>", " 3000 grams. </s>"]


#: A bos before every turn and nothing after a reply: on a GPT-2-style tokenizer that bos is also the eos.
BOS_BEFORE_TURNS = "{% for m in messages %}{{ bos_token + m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"


def test_a_turn_opening_that_is_also_the_eos_is_refused_as_ambiguous():
    """bos == eos printed only before each turn: the rule can't tell a stop from the next turn's bos, so the row is
    refused, naming the template and the fix, instead of training either guess."""
    tokenizer = byte_level_tokenizer("<|endoftext|>", "<|endoftext|>")
    tokenizer.name_or_path = "my-org/gpt2-chat"
    mask = chat_labels(tokenizer, TWO_REPLIES, chat_template=BOS_BEFORE_TURNS)
    assert set(mask.labels) == {-100}
    assert mask.problem.startswith("ambiguous end of turn: the chat template of 'my-org/gpt2-chat' prints ")
    assert "'<|endoftext|>'" in mask.problem and "eos_token" in mask.problem and "`chat_template_path`" in mask.problem
    assert mask.row_reason.startswith("chat turns not located: ambiguous end of turn")


def test_a_bos_before_every_turn_is_never_trained_when_it_is_not_the_eos():
    """The same template with `<s>` and `</s>`: no stop token is printed after a reply, the next `<s>` stays masked,
    and the last reply gets the eos appended (the note says so)."""
    tokenizer = byte_level_tokenizer("<s>", "</s>")
    mask = chat_labels(tokenizer, TWO_REPLIES, chat_template=BOS_BEFORE_TURNS)
    assert mask.problem is None
    assert trained_runs(tokenizer, mask) == [" 2000 grams.", " 3000 grams.\n</s>"]
    assert "appended" in mask.note and "message 1 has no end-of-turn token" in mask.note


def test_trainer_refuses_rows_whose_end_of_turn_is_ambiguous(make_config):
    """The refusal reaches the user as our error, before training."""
    tokenizer = byte_level_tokenizer("<|endoftext|>", "<|endoftext|>", texts=[TEXT_FOR_TRAINER])
    tokenizer.chat_template = BOS_BEFORE_TURNS
    with pytest.raises(UnsupervisedRowsError, match="ambiguous end of turn"):
        MaskedSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_config(max_length=256),
            train_dataset=_conversations(),
            processing_class=tokenizer,
        )


TEXT_FOR_TRAINER = "Be brief. What is 0 + 0? And doubled? 0 2 4 6 8 10 12 14 16 18 20 24 28"


def test_a_generation_block_without_its_stop_gets_the_stop_after_a_space():
    """A marked Llama-2-style template whose block holds the reply only: the ` </s>` after it is added by the same
    rule as for the other ways; the next `<s>` is not."""
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' }}{% generation %}{{ m['content'] }}{% endgeneration %}{{ ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    )
    tokenizer = byte_level_tokenizer("<s>", "</s>")
    mask = chat_labels(tokenizer, TWO_REPLIES, chat_template=template)
    assert mask.method == "generation markers"
    assert trained_runs(tokenizer, mask) == [" 2000 grams. </s>", " 3000 grams. </s>"]
    assert "leaves out its stop token" in mask.note
