"""Every trained turn ends where generation stops: the stop set from the model, one end-of-turn rule for every way of
locating turns, no merged header byte trained, and a saved model that stops where its turns end (issue 23).

Real vocabularies (`real_vocab`: Llama-3, DeepSeek, Qwen 2.5/3/3.6, SmolLM2) and real templates (TRL's folder, and
GLM-Edge and DeepSeek-V3.1 in tests/data/chat_templates/). Checks are on text: the trained spans are decoded and
compared with the exact strings.
"""

from __future__ import annotations

import json

import pytest
from real_vocab import require, trl_template
from template_families import byte_level_tokenizer, read_template, trained_runs
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, chat_labels
from trl_masked_sft.chat.labels import METHODS, OFFSETS, PREFIX_DIFF

GLM_SPECIAL = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
TWO = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello, friend."},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "Sure thing."},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _glm(template: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with GLM's special tokens (eos `<|endoftext|>`) and the given template."""
    texts = (template, "Hello, friend. Sure thing. Hi there Again? get_weather city Paris sunny It is")
    tokenizer = byte_level_tokenizer("<|endoftext|>", "<|endoftext|>", GLM_SPECIAL, texts)
    tokenizer.chat_template = template
    return tokenizer


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


# ------------------------------------------------------------------------------------- GLM: the opener is the stop


def test_glm_tool_call_and_middle_replies_train_the_stop_that_opens_the_next_message():
    """GLM-4.5 (TRL's glm4moe.jinja), its model's stop set: the tool call ends with `<|observation|>`, a middle reply
    with `<|user|>`, the last with the eos; nothing of the next message's header after them."""
    tokenizer = _glm(trl_template("glm4moe"))
    stops = _ids(tokenizer, "<|endoftext|>", "<|user|>", "<|observation|>")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Sure thing."},
    ]  # fmt: skip
    for method in (OFFSETS, PREFIX_DIFF):
        mask = chat_labels(tokenizer, messages, stop_token_ids=stops, tools=[WEATHER_TOOL], methods=[method])
        assert trained_runs(tokenizer, mask) == [
            "\n<think></think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "</tool_call><|observation|>",
            "\n<think></think>\nIt is sunny.<|user|>",
            "\n<think></think>\nSure thing.<|endoftext|>",
        ], method
        assert [r for r in mask.reasons if r.startswith("stop token")] == ["stop token (stop_token_ids)"] * 3


def test_glm_edge_never_trains_the_assistant_header_it_prints_after_the_last_reply():
    """GLM-Edge ends every render with `<|assistant|>`: not a stop token, never trained; the eos ends the last reply."""
    tokenizer = _glm(read_template("glm-edge"))
    default = chat_labels(tokenizer, TWO)
    assert trained_runs(tokenizer, default) == ["Hello, friend.", "Sure thing.<|endoftext|>"]
    stops = _ids(tokenizer, "<|endoftext|>", "<|user|>", "<|observation|>")
    mask = chat_labels(tokenizer, TWO, stop_token_ids=stops)
    assert trained_runs(tokenizer, mask) == ["Hello, friend.<|user|>", "Sure thing.<|endoftext|>"]
    assert tokenizer.decode(mask.input_ids).endswith("Sure thing.<|endoftext|><|assistant|>")


def test_a_turn_no_stop_token_can_end_is_refused_naming_template_stop_set_and_fix():
    """GLM-4.5 with only the eos as stop: its middle replies can't end with a stop token, so the row is refused."""
    tokenizer = _glm(trl_template("glm4moe"))
    mask = chat_labels(tokenizer, TWO, stop_token_ids=_ids(tokenizer, "<|endoftext|>"))
    assert set(mask.labels) == {-100}
    assert mask.problem.startswith("no stop token: the chat template prints '<|user|>")
    assert "'<|endoftext|>' (stop_token_ids)" in mask.problem and "`stop_token_ids`" in mask.problem


# ------------------------------------------------------------------------------------------ every way, one rule


@pytest.mark.parametrize("name", ["deepseekv3", "deepseek_r1_distill"])
def test_deepseek_never_trains_the_assistant_header_in_any_row(name):
    """DeepSeek-V3 / R1-Distill (real vocabulary): `<｜Assistant｜>` is the generation prompt's; single-reply rows,
    multi-turn rows and R1 rows whose reply carries `<think>` get the same policy."""
    tokenizer = require("deepseek", chat_template=trl_template(name))
    eos = "<｜end▁of▁sentence｜>"
    assert trained_runs(tokenizer, chat_labels(tokenizer, TWO[:2])) == [f"Hello, friend.{eos}"]
    assert trained_runs(tokenizer, chat_labels(tokenizer, TWO)) == [f"Hello, friend.{eos}", f"Sure thing.{eos}"]
    think = [TWO[0], {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello, friend."}]
    runs = trained_runs(tokenizer, chat_labels(tokenizer, think))
    assert runs and all("<｜Assistant｜>" not in run for run in runs) and runs[-1].endswith(f"Hello, friend.{eos}")


def test_gemma3_trains_the_end_of_turn_and_not_the_newline_after_it():
    """Gemma-3 (TRL's gemma3.jinja): `<end_of_turn>` is the stop, the `\\n` after it belongs to no reply."""
    template = trl_template("gemma3")
    special = ["<start_of_turn>", "<end_of_turn>", "<bos>"]
    tokenizer = byte_level_tokenizer("<bos>", "<eos>", special, (template, "Hello, friend. Sure thing. Hi there"))
    tokenizer.chat_template = template
    for method in METHODS[1:]:
        mask = chat_labels(tokenizer, TWO, methods=[method])
        assert trained_runs(tokenizer, mask) == ["Hello, friend.<end_of_turn>", "Sure thing.<end_of_turn>"], method


QWEN = [("2.5", "qwen2_5"), ("3", "qwen3"), ("3.6", "qwen3_6"), ("3.6", "qwen3_8")]


@pytest.mark.parametrize(("generation", "name"), QWEN, ids=[n for _, n in QWEN])
@pytest.mark.parametrize("thinking", [None, False])
def test_qwen_single_and_multi_turn_rows_get_one_policy(generation, name, thinking):
    """Qwen2.5/3/3.6/3.8 (real vocabularies): no header byte, no newline after `<|im_end|>`, nothing the generation
    prompt holds (with `enable_thinking=False` the empty think block) is trained, in single- and multi-turn rows."""
    tokenizer = require("qwen", generation, chat_template=trl_template(name))
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    prompt = tokenizer.apply_chat_template(TWO[:1], tokenize=False, add_generation_prompt=True, **kwargs)
    single = trained_runs(tokenizer, chat_labels(tokenizer, TWO[:2], **kwargs))
    multi = trained_runs(tokenizer, chat_labels(tokenizer, TWO, **kwargs))
    assert multi[0].endswith("Hello, friend.<|im_end|>") and not multi[0].startswith("<think>")
    for runs in (single, multi):
        last = runs[-1]
        assert last.endswith("<|im_end|>") and "\n<|im_end|>" not in last[-11:] and "assistant" not in last
        assert not (prompt.endswith("<think>\n\n</think>\n\n") and "<think>" in last), last
        assert not (prompt.endswith("<think>\n") and last.startswith("<think>\n")), last
    assert single[-1].replace("Hello, friend.", "") == multi[-1].replace("Sure thing.", "")


def test_deepseek_v3_1_empty_tool_call_turn_trains_its_tool_call_and_stop_not_the_header():
    """DeepSeek-V3.1 (llama.cpp's copy of its template): a tool-call turn with empty content trains the call and
    `<｜end▁of▁sentence｜>`, never `<｜Assistant｜></think>`."""
    tokenizer = require("deepseek", chat_template=read_template("deepseek-v3.1"))
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Il fait beau à Paris ☀️ "},
    ]  # fmt: skip
    mask = chat_labels(tokenizer, messages)
    eos = "<｜end▁of▁sentence｜>"
    runs = trained_runs(tokenizer, mask)
    assert runs[0] == (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
        f"<｜tool▁calls▁end｜>{eos}"
    )
    assert runs[1] == f"Il fait beau à Paris ☀️ {eos}"


def test_llama_3_1_trains_eot_and_eom_after_a_built_in_tool_call():
    """Llama-3.1 with its Instruct stop set (real vocabulary): `<|eom_id|>` ends a built-in tool call, `<|eot_id|>`
    a reply; pad == eos changes nothing."""
    tokenizer = require("llama3", eos="<|eot_id|>", chat_template=trl_template("llama3_1"))
    tokenizer.pad_token = tokenizer.eos_token
    stops = _ids(tokenizer, "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    tool = {"type": "function", "function": {"name": "brave_search", "description": "search", "parameters": {}}}
    messages = [
        {"role": "user", "content": " Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "Paris"}}}]},
        {"role": "ipython", "content": "sunny"},
        {"role": "assistant", "content": "\nIt is sunny. "},
    ]  # fmt: skip
    mask = chat_labels(tokenizer, messages, stop_token_ids=stops, tools=[tool], builtin_tools=["brave_search"])
    assert trained_runs(tokenizer, mask) == [
        '<|python_tag|>brave_search.call(query="Paris")<|eom_id|>',
        "It is sunny.<|eot_id|>",  # the template trims replies
    ]


# ------------------------------------------------------------------------------------------ merged header bytes


def test_a_reply_merged_with_the_header_leaves_that_token_untrained_and_is_counted(smollm2_tokenizer):
    """SmolLM2's real tokenizer merges the header's `\\n` with the first `\\n` of a reply starting `\\n\\n`: that
    token holds a header byte, so it is not trained (the reply after it is), and the row is counted."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello there."}]
    mask = chat_labels(smollm2_tokenizer, messages)
    runs = trained_runs(smollm2_tokenizer, mask)
    assert runs == ["\nHello there.<|im_end|>"] and mask.merged == 1
    assert "merged with the header (not trained)" in mask.reasons
    from datasets import Dataset

    from trl_masked_sft import audit_dataset

    report = audit_dataset(Dataset.from_dict({"messages": [messages, TWO]}), smollm2_tokenizer)
    assert report.rows_merged_header == 1 and "1 rows with a reply whose first token merged" in report.summary()


# ------------------------------------------------------------------- a base model with an Instruct template stops


LLAMA31_SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]


def _byte_llama31() -> PreTrainedTokenizerFast:
    """Bytes plus Llama-3.1's special tokens; eos `<|end_of_text|>` as the base model's tokenizer sets it."""
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|pad|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA31_SPECIAL})
    tokenizer.chat_template = trl_template("llama3_1")
    return tokenizer


def test_the_instruct_end_of_turn_is_refused_by_a_stop_set_without_it_real_vocab():
    """Llama-3.1 template, real vocabulary, stop set `<|end_of_text|>` only: no reply can end with a stop token."""
    tokenizer = require("llama3", chat_template=trl_template("llama3_1"))
    mask = chat_labels(tokenizer, TWO, stop_token_ids=_ids(tokenizer, "<|end_of_text|>"))
    assert mask.problem.startswith("no stop token") and "'<|eot_id|>" in mask.problem


@pytest.mark.parametrize("adapter", [False, True], ids=["model", "adapter"])
def test_a_base_model_with_an_instruct_template_is_told_and_saved_stopping_at_eot(tmp_path, adapter, capture_logs):
    """The model stops only at `<|end_of_text|>`; the template ends turns with `<|eot_id|>`: said before training
    (both tokens named), trained as the stop, and in the saved model's (or adapter's) generation_config.json."""
    from datasets import Dataset
    from peft import LoraConfig

    tokenizer = _byte_llama31()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    model = LlamaForCausalLM(config)
    end_of_text, eot = _ids(tokenizer, "<|end_of_text|>", "<|eot_id|>")
    model.generation_config.eos_token_id = end_of_text
    args = MaskedSFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, max_length=512, report_to="none",
                           use_cpu=True, bf16=False, per_device_train_batch_size=1, save_strategy="no")  # fmt: skip
    data = Dataset.from_dict({"messages": [TWO]})
    peft = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM") if adapter else None
    with pytest.warns(
        UserWarning, match=r"'<\|eot_id\|>', which is not in the model's stop set .*'<\|end_of_text\|>'"
    ):
        trainer = MaskedSFTTrainer(model, args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    row = trainer.train_dataset[0]
    assert [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == t].count(eot) == 2
    assert "Stop set: '<|end_of_text|>' (generation_config), '<|eot_id|>' (template)" in "".join(
        r.summary() for r in trainer.audit_reports.values()
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [end_of_text, eot]
