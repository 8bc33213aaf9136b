"""A tiny causal LM and tokenizer built locally, with no download: the offline demo model and the test fixture.

The tokenizer is a byte-level BPE trained in well under a second on a small corpus; the model is a two-layer Llama
built from a config. Both are real `transformers` objects, so everything that trains them trains a real model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["CHATML_TEMPLATE", "build_tiny_model", "build_tiny_tokenizer"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

#: A ChatML-style template (the SmolLM2 family uses this layout), enough for conversational datasets in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DEFAULT_CORPUS = (
    "How many meters are there in 3 km? <answer>3000</answer>",
    "Convert 5 hour to minutes. <answer>300</answer>",
    "What is 2 kg in gram? <answer>2000</answer>",
    "### Question: What is the capital of France?\n### Answer: Paris",
    "The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?-+*/=()[]{}<>'\"",
)


def build_tiny_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 400,
    *,
    pad_token: str | None = PAD,
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer on `corpus` (a built-in sample when `None`).

    Every byte is in the vocabulary, so any text tokenizes. `pad_token=None` leaves the tokenizer without a pad
    token (as many real ones are); pass `pad_token=EOS` for the common pad == eos setup.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else list(_DEFAULT_CORPUS)
    tokenizer.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS)
    if pad_token is not None:
        fast.pad_token = pad_token
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    initializer_range: float = 0.2,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for CPU tests, its vocabulary matching `tokenizer`.

    The weights are drawn wider than a real model's (`initializer_range` 0.2, not 0.02) so that its random features
    are varied enough for a LoRA adapter alone to learn a small task in a few dozen steps.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    end = tokenizer.get_vocab().get("<|im_end|>")  # as an Instruct model's, it stops at its template's turn end too
    model.generation_config.eos_token_id = tokenizer.eos_token_id if end is None else [tokenizer.eos_token_id, end]
    return model
