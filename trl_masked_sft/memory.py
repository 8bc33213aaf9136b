"""Activation checkpointing on a CPU, decided from an estimate of the activation memory against the machine's.

Without checkpointing a training step keeps every layer's activations for the backward pass: about tokens × layers ×
hidden size × `ACTIVATION_BYTES` bytes for the step's largest batch. On the homework's short rows that is a few
hundred MB and recomputing them costs a third more time, so checkpointing stays off; on long rows (8 rows of 580
tokens a step, SmolLM2-135M) it is about 5 GB, more than TRL's own defaults (checkpointing on) would use. The trainer
turns checkpointing on when the estimate exceeds `MEMORY_SHARE` of the machine's memory or `AVAILABLE_SHARE` of what
is available now, and says the estimate and the choice in the log line that names the precision.
"""

from __future__ import annotations

import os
from pathlib import Path

from .logs import get_logger

logger = get_logger(__name__)

__all__ = [
    "ACTIVATION_BYTES",
    "AVAILABLE_SHARE",
    "MEMORY_SHARE",
    "activation_estimate",
    "checkpointing_by_memory",
    "machine_memory",
]

#: Bytes kept for the backward pass per token, layer and hidden unit, without checkpointing. Measured on
#: SmolLM2-135M (30 layers × 576) under bf16 autocast, 8 rows of 581 tokens a step: the peak RSS growth of `train()`
#: was 8,329 MiB without checkpointing and 4,416 MiB with it, 3,913 MiB apart for 4,648 tokens × 30 × 576: 51 bytes
#: (docs/precision_and_memory.md); rounded up. It covers the MLP's wider activations and the attention's buffers.
ACTIVATION_BYTES = 64

#: Checkpointing stays off only while the estimate is at most this share of the machine's memory (a property of the
#: machine, so the choice does not flip with other jobs' use)...
MEMORY_SHARE = 0.125
#: ...and at most this share of the memory available right now: the rest is the margin left for the weights, the
#: optimizer, the data and whatever else the machine runs.
AVAILABLE_SHARE = 0.5


def machine_memory() -> tuple[int, int] | None:
    """`(total, available)` memory in bytes: `MemTotal` and `MemAvailable` of /proc/meminfo (Linux), else the physical
    memory from `sysconf` for both, else None."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, ValueError, KeyError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return total, total


def _shape(model) -> tuple[int, int] | None:
    """`(layers, hidden size)` of a transformers model (through a PEFT wrapper), or None when its config lacks them."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    return (layers, hidden) if isinstance(layers, int) and isinstance(hidden, int) else None


def _largest_batch_tokens(dataset, batch: int, max_length: int | None) -> int | None:
    """The tokens of the `batch` longest rows of a prepared dataset (each cut at `max_length`): the worst step's."""
    table = getattr(dataset, "data", None)
    if table is None or "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    if max_length:
        lengths = lengths.clip(max=max_length)
    lengths.sort()
    return int(lengths[-batch:].sum())


def activation_estimate(model, tokens_per_step: int) -> int | None:
    """Bytes of activations a step of `tokens_per_step` tokens keeps without checkpointing, or None if unknown."""
    shape = _shape(model)
    return None if shape is None else tokens_per_step * shape[0] * shape[1] * ACTIVATION_BYTES


def checkpointing_by_memory(trainer) -> str | None:
    """Where the config left activation checkpointing to the trainer (`_checkpointing_auto`: unset on a CPU), turn
    it on when the estimate exceeds `MEMORY_SHARE` of the machine's memory or `AVAILABLE_SHARE` of what is available.
    Returns the sentence for the log, or None when the choice was the user's or nothing could be estimated (off)."""
    args = trainer.args
    if not getattr(args, "_checkpointing_auto", False) or args.activation_checkpointing:
        return None
    tokens = _largest_batch_tokens(trainer.train_dataset, args.per_device_train_batch_size, args.max_length)
    estimate = None if tokens is None else activation_estimate(trainer.model, tokens)
    memory = machine_memory()
    if estimate is None or not memory:
        return None
    total, available = memory
    needed = estimate > MEMORY_SHARE * total or estimate > AVAILABLE_SHARE * available
    said = (
        f"activation checkpointing {'on' if needed else 'off'}: about {estimate / 2**30:.1f} GB of activations for "
        f"the largest batch ({tokens:,} tokens) against {total / 2**30:.1f} GB of memory, {available / 2**30:.1f} GB "
        f"available (on above {MEMORY_SHARE:.1%} of the memory or {AVAILABLE_SHARE:.0%} of what is available; set "
        "`activation_checkpointing` to choose)"
    )
    if needed:
        args.activation_checkpointing = True
        # transformers 4.x names the kwargs `gradient_checkpointing_kwargs` only
        kwargs = dict(
            getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {}
        )
        model = trainer.model  # as `Trainer.__init__` enables it, which ran before the data were known
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None)
        else:  # transformers before 5.0 names it after gradients
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # a frozen base: the checkpointed blocks need an input grad
    return said
