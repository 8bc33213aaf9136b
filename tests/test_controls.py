"""The chat controls, checked at the text level on real templates from TRL's folder with real vocabularies: what each
control trains is decoded and compared with exact strings.

GLM-4.5 and gpt-oss have no vocabulary here; Qwen's real vocabulary with the family's special tokens added stands in
(what masking reads is which strings are special tokens).
"""

from __future__ import annotations

from functools import cache

import pytest
from real_vocab import require, trl_template
from template_families import trained_runs, trained_spans

from trl_masked_sft import MaskedSFTConfig, PreparationPipeline, chat_labels, inspect_rows
from trl_masked_sft.chat.controls import (
    EMPTIED,
    MASKED_BY_KEY,
    REASONING_MASKED,
    TOOL_CALL_MASKED,
    ZERO_WEIGHT,
    ChatControls,
)
from trl_masked_sft.errors import ConfigError, DatasetTypeError
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

REASONED = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"},
]
INLINE = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>Add two and two.</think>4"}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@cache
def _qwen3():
    return require("qwen", "3", chat_template=trl_template("qwen3"))


@cache
def _llama31():
    return require("llama3", eos="<|eot_id|>", chat_template=trl_template("llama3_1"))


def _with_specials(tokenizer, specials: list[str], eos: str):
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token = eos
    return tokenizer


@cache
def _glm():
    specials = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
    return _with_specials(require("qwen", "3", chat_template=trl_template("glm4moe")), specials, "<|endoftext|>")


@cache
def _gptoss():
    specials = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]
    return _with_specials(require("qwen", "3", chat_template=trl_template("gptoss")), specials, "<|return|>")


def _runs(tokenizer, messages, **kwargs) -> list[str]:
    mask = chat_labels(tokenizer, messages, **kwargs)
    assert mask.problem is None, mask.problem
    return trained_runs(tokenizer, mask)


def _mask(**controls) -> ChatControls:
    return ChatControls(**controls)


# ------------------------------------------------------------------------------------------- per-message `train`


def test_train_false_masks_a_reply_and_true_trains_a_user_turn_with_its_stop_on_qwen3():
    """`train: false` masks an assistant reply; `train: true` trains a user message's text and its `<|im_end|>`."""
    messages = [dict(m) for m in CHAT]
    messages[2]["train"], messages[3]["train"] = False, True
    assert _runs(_qwen3(), messages) == ["2+2?<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"]


def test_messages_without_the_key_follow_the_roles():
    """No key anywhere: exactly today's labels (every reply and its stop)."""
    assert _runs(_qwen3(), CHAT) == ["Hello!<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"]


def test_a_renamed_train_key_is_read_and_the_default_one_is_then_ignored():
    """`message_train_key='loss'`: `loss: false` masks; a `train` key is just another key the template ignores."""
    messages = [dict(m) for m in CHAT]
    messages[2]["loss"] = False
    controls = _mask(message_train_key="loss")
    assert _runs(_qwen3(), messages, controls=controls) == ["<think>\n\n</think>\n\n4<|im_end|>"]


@pytest.mark.parametrize("value", ["no", 1, 0.0])
def test_a_train_key_that_is_not_a_bool_is_refused_with_the_row_and_the_fix(tokenizer, value):
    """`train` must be true or false: a string or number is refused naming the row, the message, the value, the fix."""
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo", "train": value}]}]
    with pytest.raises(DatasetTypeError, match=rf"Row 0 of the train dataset: message 1 has `train` = {value!r}.*Fix"):
        PreparationPipeline.from_config(tokenizer).prepare(rows)


def test_train_true_on_llama3_trains_the_text_and_its_eot():
    """Llama-3.1: a user message with `train: true` trains its text and `<|eot_id|>`, not the next header."""
    tokenizer = _llama31()
    messages = [dict(m) for m in CHAT[1:]]
    messages[0]["train"] = True
    assert _runs(tokenizer, messages) == ["Hi there<|eot_id|>", "Hello!<|eot_id|>", "4<|eot_id|>"]


def test_train_true_on_smollm2(smollm2_tokenizer):
    """SmolLM2 (ChatML, its own system prompt): the system message trained on request, with its `<|im_end|>`."""
    messages = [dict(m) for m in CHAT]
    messages[0]["train"] = True
    assert _runs(smollm2_tokenizer, messages) == ["Be brief.<|im_end|>", "Hello!<|im_end|>", "4<|im_end|>"]


# ------------------------------------------------------------------------------------------------- `train_roles`


def test_train_roles_can_train_the_whole_conversation():
    """`train_roles=("system", "user", "assistant")`: every message's text and stop token, no template header."""
    runs = _runs(_qwen3(), CHAT, controls=_mask(train_roles=("system", "user", "assistant")))
    assert runs == [
        "Be brief.<|im_end|>",
        "Hi there<|im_end|>",
        "Hello!<|im_end|>",
        "2+2?<|im_end|>",
        "<think>\n\n</think>\n\n4<|im_end|>",
    ]


def test_train_roles_with_tool_trains_tool_results_through_their_stop():
    """`("assistant", "tool")` on Qwen3: the tool result's text, its `</tool_response>` wrapper and `<|im_end|>`."""
    runs = _runs(_qwen3(), TOOLS, controls=_mask(train_roles=("assistant", "tool")))
    assert "sunny\n</tool_response><|im_end|>" in runs


def test_train_roles_take_the_role_names_templates_and_sharegpt_use():
    """`ipython` (Llama-3.1's tool role) trains; `gpt` (ShareGPT) means the assistant; `model` matches its role."""
    tokenizer = _llama31()
    messages = [{"role": "user", "content": "Weather?"}, {"role": "ipython", "content": "sunny"}, CHAT[4]]
    runs = _runs(tokenizer, messages, controls=_mask(train_roles=("gpt", "ipython")))
    assert runs == ['"sunny"<|eot_id|>', "4<|eot_id|>"]  # Llama-3.1 writes a tool result as JSON
    assert ChatControls(train_roles=("model",)).roles == {"model"}
    assert ChatControls(train_roles=("gpt", "human")).roles == {"gpt", "human", "assistant", "user"}


# -------------------------------------------------------------------------------------------------- `reasoning`


@pytest.mark.parametrize(
    ("template", "messages", "trained", "masked"),
    [
        ("qwen3", REASONED, "<think>\nAdd two and two.\n</think>\n\n4<|im_end|>", "4<|im_end|>"),
        ("qwen3", INLINE, "<think>\nAdd two and two.\n</think>\n\n4<|im_end|>", "4<|im_end|>"),
        ("qwen3", CHAT[3:], "<think>\n\n</think>\n\n4<|im_end|>", "4<|im_end|>"),  # the empty block thinking-off
        ("llama3_1", INLINE, "<think>Add two and two.</think>4<|eot_id|>", "4<|eot_id|>"),
    ],
)
def test_reasoning_mask_keeps_the_answer_and_its_stop(template, messages, trained, masked):
    """`reasoning="mask"`: the reasoning and the wrapper the template renders are masked; answer and stop train."""
    tokenizer = _qwen3() if template == "qwen3" else _llama31()
    # A two-message Qwen3 row is located by TRL's training copy, which also trains the newline after `<|im_end|>`.
    assert [r.removesuffix("\n") for r in _runs(tokenizer, messages)] == [trained]
    assert [r.removesuffix("\n") for r in _runs(tokenizer, messages, controls=_mask(reasoning="mask"))] == [masked]


def test_reasoning_mask_on_deepseek_r1_distill_where_the_template_drops_the_reasoning():
    """DeepSeek-R1-Distill renders only the part after `</think>`: nothing of the reasoning is trained either way."""
    tokenizer = require("deepseek", chat_template=trl_template("deepseek_r1_distill"))
    for controls in (ChatControls(), _mask(reasoning="mask")):
        runs = _runs(tokenizer, INLINE, controls=controls)
        assert runs[-1].endswith("4<｜end▁of▁sentence｜>") and "Add two" not in "".join(runs)


def test_reasoning_mask_on_glm45():
    """GLM-4.5: `<think>…</think>` masked, answer and the appended stop trained."""
    runs = _runs(_glm(), REASONED, controls=_mask(reasoning="mask"))
    assert runs == ["4<|endoftext|>"]
    assert _runs(_glm(), REASONED) == ["\n<think>Add two and two.</think>\n4<|endoftext|>"]


@pytest.mark.parametrize("key", ["reasoning_content", "thinking"])
def test_reasoning_mask_on_gptoss_masks_the_analysis_channel(key):
    """gpt-oss: the `analysis` channel up to the final channel's header is masked; `<|channel|>final…` trains."""
    if key == "reasoning_content" and TRANSFORMERS_MAJOR < 5:
        pytest.skip("transformers 4.x does not copy `reasoning_content` into the `thinking` gpt-oss's template reads")
    messages = [REASONED[0], {"role": "assistant", key: "Add two and two.", "content": "4"}]
    full = "<|channel|>analysis<|message|>Add two and two.<|end|><|start|>assistant"  # after the prompt
    assert _runs(_gptoss(), messages) == [f"{full}<|channel|>final<|message|>4<|return|>"]
    assert _runs(_gptoss(), messages, controls=_mask(reasoning="mask")) == ["<|channel|>final<|message|>4<|return|>"]


# ------------------------------------------------------------------------------------------------- `tool_calls`


def test_tool_calls_mask_keeps_the_stop_of_a_tool_only_turn_on_qwen3():
    """Qwen3: the `<tool_call>` block is masked, the tool-only turn's `<|im_end|>` and the reply still train."""
    assert _runs(_qwen3(), TOOLS, controls=_mask(tool_calls="mask")) == [
        "<|im_end|>",
        "<think>\n\n</think>\n\nIt is sunny.<|im_end|>",
    ]


def test_tool_calls_mask_on_llama3_masks_the_json_call():
    """Llama-3.1 writes the call as JSON in the turn: masked, its `<|eot_id|>` kept."""
    tokenizer = _llama31()
    assert _runs(tokenizer, TOOLS) == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is sunny.<|eot_id|>",
    ]
    assert _runs(tokenizer, TOOLS, controls=_mask(tool_calls="mask")) == ["<|eot_id|>", "It is sunny.<|eot_id|>"]


def test_tool_calls_mask_on_gptoss_keeps_the_call_stop():
    """gpt-oss: the recipient, channel and arguments of the call are masked; `<|call|>` (its stop) trains."""
    runs = _runs(_gptoss(), TOOLS, controls=_mask(tool_calls="mask"))
    assert "<|call|>" in runs and not any("Paris" in r for r in runs)


def test_tool_calls_mask_on_glm45():
    """GLM-4.5: the `<tool_call>` block is masked; the reply after the tool result trains."""
    runs = _runs(_glm(), TOOLS, controls=_mask(tool_calls="mask"))
    assert not any("get_weather" in r for r in runs) and runs[-1] == "\n<think></think>\nIt is sunny.<|endoftext|>"


# ------------------------------------------------------------------------------------------------ `train_on_eot`


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (True, ["Hello!<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"]),
        ("turn", ["Hello!<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"]),
        (False, ["Hello!", "<think>\n\n</think>\n\n4"]),
        ("none", ["Hello!", "<think>\n\n</think>\n\n4"]),
        ("last", ["Hello!", "<think>\n\n</think>\n\n4<|im_end|>"]),
        (
            "all",
            ["<|im_end|>", "<|im_end|>", "Hello!<|im_end|>", "<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"],
        ),
    ],
)
def test_train_on_eot_modes_on_qwen3(mode, expected):
    """`True`/`"turn"` each trained turn's stop, `False`/`"none"` none, `"last"` the final one's, `"all"` every one."""
    assert _runs(_qwen3(), CHAT, train_eot=mode) == expected


def test_train_on_eot_last_on_llama3():
    """Llama-3.1 `"last"`: the earlier reply's `<|eot_id|>` is masked, the final one's trained."""
    tokenizer = _llama31()
    assert _runs(tokenizer, CHAT, train_eot="last") == ["Hello!", "4<|eot_id|>"]


def test_train_on_eot_values_are_checked(tmp_path):
    """A typo is refused naming the field, the value, the choices and the fix."""
    with pytest.raises(ConfigError, match=r"`train_on_eot` must be True or False, or one of 'turn'.*got str 'lats'"):
        MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True, train_on_eot="lats")
    assert MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True, train_on_eot="all").train_on_eot == "all"


# ---------------------------------------------------------------------------------------- rows, audit, inspector


def test_a_conversation_the_controls_empty_is_a_fully_masked_row(tokenizer):
    """Every reply `train: false`: the row has no supervised token and `masked_row_policy` counts it, with its reason."""
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo", "train": False}]}]
    rows.append({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
    prepared = PreparationPipeline.from_config(tokenizer).prepare(rows, enforce=False)
    assert prepared.report.rows_fully_masked == 1
    assert prepared.report.unsupervised_rows[0].startswith(EMPTIED)
    assert "masked_row_policy" in prepared.report.policy_error


def test_the_inspector_names_each_control(tokenizer, tmp_path):
    """The inspector's per-token reasons: train false, weight 0, reasoning and tool call masked."""
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "train": False},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Nope", "weight": 0},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>Add.</think>4", "tool_calls": [CALL]},
    ]
    config = MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True, reasoning="mask", tool_calls="mask")
    (row,) = inspect_rows([{"messages": messages}], tokenizer, config, rows=1)
    reasons = {}
    for token in row.tokens:
        reasons.setdefault(token.reason, "")
        reasons[token.reason] += token.text
    assert reasons[MASKED_BY_KEY] == "Hello<|im_end|>"
    assert reasons[ZERO_WEIGHT] == "Nope<|im_end|>"
    assert reasons[REASONING_MASKED] == "<think>Add.</think>"
    assert TOOL_CALL_MASKED not in reasons or "get_weather" in reasons[TOOL_CALL_MASKED]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("reasoning", "hide", r"`reasoning` must be one of 'train', 'mask', got 'hide'"),
        ("tool_calls", "drop", r"`tool_calls` must be one of 'train', 'mask', got 'drop'"),
        ("train_roles", "assistant", r"`train_roles` must be a list of role names, got str 'assistant'"),
        ("message_train_key", "role", r"`message_train_key` must be a message key other than 'role'"),
        ("message_weight_key", "train", r"`message_train_key` and `message_weight_key` are both 'train'"),
    ],
)
def test_bad_control_settings_are_refused_naming_field_value_and_fix(tmp_path, field, value, match):
    """Each control's config field is checked when the config is built."""
    with pytest.raises(ConfigError, match=match):
        MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_the_controls_reach_the_pipeline_from_the_config(tmp_path):
    """`MaskedSFTConfig` → `MaskingOptions` → the pipeline's labels, on Qwen3."""
    config = MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True, reasoning="mask", train_on_eot="last")
    prepared = PreparationPipeline.from_config(_qwen3(), config).prepare([{"messages": CHAT}], enforce=False)
    row = prepared.dataset[0]
    assert trained_runs_of(_qwen3(), row) == ["Hello!", "4<|im_end|>"]


def trained_runs_of(tokenizer, row) -> list[str]:
    return trained_spans(tokenizer, row["input_ids"], row["labels"])


def test_the_cli_takes_every_control_as_a_flag(tmp_path, capsys):
    """`inspect --reasoning mask --train_on_eot last --train_roles user assistant` on a JSONL file: each shows."""
    import json

    from trl_masked_sft.cli import main

    messages = [dict(m) for m in CHAT]
    messages[2]["train"] = False
    messages[4] = {"role": "assistant", "content": "<think>Add.</think>4", "weight": 2.0}
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    flags = [
        "--reasoning",
        "mask",
        "--tool_calls",
        "mask",
        "--train_on_eot",
        "last",
        "--train_roles",
        "user",
        "assistant",
    ]
    assert main(["inspect", "--dataset_name", str(data), "--rows", "1", "--color", "never", *flags]) == 0
    out = capsys.readouterr().out
    assert "[TRAIN]Hi there[/TRAIN][end of turn (not trained)]<|im_end|>" in out
    assert f"[{MASKED_BY_KEY}]Hello!<|im_end|>[/{MASKED_BY_KEY}]" in out
    assert f"[{REASONING_MASKED}]<think>Add.</think>[/{REASONING_MASKED}][TRAIN]4[/TRAIN]" in out
    assert "[TRAIN]4[/TRAIN][TRAIN stop token (template)]<|im_end|>" in out
    assert main(["audit", "--dataset_name", str(data), "--train_on_eot", "all", "--message_weight_key", "w"]) == 0
