"""The real vocabularies the chat and boundary tests use load offline and give the ids their models give."""

from __future__ import annotations

import pytest
from real_vocab import require, trl_template


def test_qwen_ranks_give_qwens_known_ids():
    """Qwen2/2.5/3's ranks with Qwen's regex: "Hello world" -> [9707, 1879]; its added tokens start at 151643."""
    tokenizer = require("qwen", "3")
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]) == [
        151643, 151644, 151645, 151667,
    ]  # fmt: skip


def test_llama3_names_eom_and_python_tag_as_llama_3_1_does():
    tokenizer = require("llama3", eos="<|eot_id|>", chat_template=trl_template("llama3_1"))
    assert tokenizer.convert_ids_to_tokens([128001, 128008, 128009, 128010]) == [
        "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    ]  # fmt: skip
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" in text


@pytest.mark.parametrize("name", ["<｜User｜>", "<｜Assistant｜>", "<think>", "<｜tool▁calls▁begin｜>"])
def test_deepseek_has_its_chat_tokens(name):
    tokenizer = require("deepseek")
    ids = tokenizer(name, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [name]
    assert tokenizer.eos_token == "<｜end▁of▁sentence｜>" and tokenizer.bos_token_id == 0
