"""Activation checkpointing on a CPU follows an estimate of the activation memory (`memory.py`), said in the log."""

from __future__ import annotations

import logging

import pytest
from transformers import LlamaConfig

from trl_masked_sft import MaskedSFTTrainer, memory
from trl_masked_sft.memory import ACTIVATION_BYTES, MEMORY_SHARE, activation_estimate, machine_memory
from trl_masked_sft.precision import has_accelerator

pytestmark = pytest.mark.skipif(has_accelerator(), reason="the memory rule decides only where no accelerator is")

_ROWS = [["What is 1 km in m?", 1000.0], ["What is 2 kg in g?", 2000.0], ["What is 3 h in min?", 180.0]] * 4


class _Model:
    def __init__(self, **config):
        self.config = LlamaConfig(**config)


def _checkpointing(model) -> bool:
    """The model's checkpointing flag under either name (transformers 4.x: `is_gradient_checkpointing`)."""
    if hasattr(model, "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def test_the_estimate_is_tokens_times_layers_times_hidden_times_bytes():
    """SmolLM2-135M's shape (30 layers × 576) on 8 rows of 580 tokens: 4640 × 30 × 576 × ACTIVATION_BYTES."""
    model = _Model(num_hidden_layers=30, hidden_size=576, num_attention_heads=9)
    assert activation_estimate(model, 8 * 580) == 8 * 580 * 30 * 576 * ACTIVATION_BYTES
    assert activation_estimate(object(), 100) is None  # no config: nothing estimated


def test_the_machine_memory_is_read():
    """The total and available memory come from /proc/meminfo (or sysconf): positive, available at most total."""
    total, available = machine_memory()
    assert 0 < available <= total


def _train(model, tokenizer, make_config, capture_logs, **overrides):
    said = capture_logs("trl_masked_sft.precision", logging.INFO)
    trainer = MaskedSFTTrainer(
        model=model, args=make_config(**overrides), train_dataset=_ROWS, processing_class=tokenizer
    )
    trainer.train()
    return trainer, " ".join(said)


def test_short_rows_leave_checkpointing_off_and_the_log_says_the_estimate(model, tokenizer, make_config, capture_logs):
    """A small estimate against the machine's memory: off (recomputing would cost time for nothing), and the log line
    gives the estimate, the largest batch's tokens and the memory."""
    trainer, said = _train(model, tokenizer, make_config, capture_logs)
    assert trainer.args.activation_checkpointing is False
    assert not _checkpointing(trainer.model)
    assert (
        "activation checkpointing off" in said
        and "GB available" in said
        and "GB of memory" in said
        and "tokens)" in said
    )


def test_an_estimate_above_the_share_of_memory_turns_checkpointing_on(
    model, tokenizer, make_config, capture_logs, monkeypatch
):
    """When the activations would take more than MEMORY_SHARE of the available memory, checkpointing is on and the
    run trains through it."""
    monkeypatch.setattr(memory, "machine_memory", lambda: (1024, 1024))  # a machine with almost nothing left
    trainer, said = _train(model, tokenizer, make_config, capture_logs)
    assert trainer.args.activation_checkpointing is True
    assert _checkpointing(trainer.model)
    assert "activation checkpointing on" in said and f"{MEMORY_SHARE:.1%}" in said
    assert trainer.state.global_step == 2


def test_an_explicit_choice_is_never_overridden(model, tokenizer, make_config, capture_logs, monkeypatch):
    """`activation_checkpointing=False` set by the user stays off, whatever the estimate, and nothing is said."""
    monkeypatch.setattr(memory, "machine_memory", lambda: (1024, 1024))
    trainer, said = _train(model, tokenizer, make_config, capture_logs, activation_checkpointing=False)
    assert trainer.args.activation_checkpointing is False and "activation checkpointing" not in said
