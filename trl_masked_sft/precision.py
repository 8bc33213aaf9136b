"""Precision on a CPU: bfloat16 where the processor computes it natively and the model is large enough to gain.

transformers trains in float32 on a CPU unless `bf16=True` *and* `use_cpu=True` are both given, although many CPUs
(x86 with AVX512-BF16 or AMX, Arm with the BF16 extension) run bfloat16 matrix products two to three times faster
than float32 ones. `MaskedSFTConfig(bf16=None)` (the default) leaves the choice to the trainer, which knows the
model: bfloat16 autocast on such a CPU for a model of at least `MIN_BF16_PARAMETERS` parameters, float32 otherwise
(small matrices gain nothing from bfloat16 and pay for the casts).

One more rule makes bfloat16 exact enough for LoRA: PEFT adds an adapter's output to its base layer's output in
the base output's dtype, which under autocast is bfloat16. A freshly initialised adapter's contribution is far below
bfloat16's resolution (8 bits of mantissa), so it is rounded away and the first steps barely move the loss.
`keep_adapter_sums_in_float32` makes each adapted base layer return float32, so the sum keeps the adapter's part;
with it the loss follows the float32 run within the tolerance stated in the README.
"""

from __future__ import annotations

import contextlib
import platform
from functools import lru_cache
from pathlib import Path

import torch

from .logs import get_logger

logger = get_logger(__name__)

__all__ = [
    "MIN_BF16_PARAMETERS",
    "cpu_bf16_setup",
    "cpu_has_native_bf16",
    "has_accelerator",
    "keep_adapter_sums_in_float32",
    "resolve_cpu_bf16",
    "torch_threads",
]

#: Below this many parameters a model trains as fast or faster in float32 on a CPU (measured in the README).
MIN_BF16_PARAMETERS = 20_000_000

_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic units: AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on Arm.

    Read from `/proc/cpuinfo` (Linux); False where it can't be read, so nothing changes on an unknown machine.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(flag in flags for flag in _X86_BF16_FLAGS)


def has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator (CUDA, ROCm, XPU, MPS, NPU)."""
    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return True
    return hasattr(torch, "npu") and torch.npu.is_available()


def resolve_cpu_bf16(model, args) -> str | None:
    """Turn bfloat16 autocast on in the trainer's copy of `args` where it pays; return the reason, or None.

    Only when the user left `bf16` unset (`MaskedSFTConfig`'s `bf16=None`, kept as `args._bf16_auto`), no
    accelerator is present, the CPU has native bfloat16, and `model` is an object of at least `MIN_BF16_PARAMETERS`
    parameters. `args.use_cpu` is set as transformers requires for bfloat16 on a CPU.
    """
    if not getattr(args, "_bf16_auto", False) or args.bf16 or args.fp16 or isinstance(model, str):
        return None
    if has_accelerator() or not cpu_has_native_bf16():
        return None
    parameters = sum(p.numel() for p in model.parameters())
    if parameters < MIN_BF16_PARAMETERS:
        return None
    args.bf16, args.mixed_precision, args.use_cpu = True, "bf16", True
    return (
        f"`bf16` was not set: training with bfloat16 autocast on this CPU, which computes bfloat16 natively, for a "
        f"model of {parameters / 1e6:.0f}M parameters (float32 weights and optimizer state; LoRA sums kept in "
        "float32). Set `bf16=False` to train in float32."
    )


def _float32_output(module, inputs, output):
    return output.float() if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16 else output


def keep_adapter_sums_in_float32(model) -> int:
    """Make each LoRA-adapted layer's base output float32, so the adapter's small output is not rounded away.

    Under bfloat16 autocast PEFT computes `base(x) + lora_B(lora_A(x)) * scaling` in bfloat16; with the base output
    in float32 the sum is float32 (the adapter's own product stays bfloat16, its precision relative to itself). A
    no-op outside autocast. Returns how many layers were hooked; installed once per layer.
    """
    from peft.tuners.lora import LoraLayer  # here, not at import: the CLI's `--help` loads no PEFT

    hooked = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(module, LoraLayer) or not isinstance(base, torch.nn.Module):
            continue
        if not getattr(base, "_msft_float32_output", False):
            base.register_forward_hook(_float32_output)
            base._msft_float32_output = True
        hooked += 1
    return hooked


def cpu_bf16_setup(model, args, *, note: str | None = None) -> None:
    """At the start of training: say `note` (from `resolve_cpu_bf16`) once and, under bfloat16 on a CPU, keep the
    LoRA sums in float32."""
    if note:
        logger.info(note)
    if args.bf16 and (args.use_cpu or not has_accelerator()):
        keep_adapter_sums_in_float32(model)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with `count` intra-op threads (unchanged when None), then restore the previous count: a tiny
    model on many threads spends its steps synchronising them."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
