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

Under bfloat16 autocast every product with a frozen float32 weight casts that weight to bfloat16 again, forward and
backward, at every step. `FrozenWeightsInBf16` holds the frozen weights of the linear layers in bfloat16 for the
length of `train()` instead: the same products on the same bfloat16 values (autocast rounds as the cast does), with
the casts gone. The user's parameters are kept aside, untouched, and put back when training ends or fails; trainable
weights, the optimizer state, embeddings, norms and the LoRA sums stay float32.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from transformers import TrainerCallback

from .logs import get_logger

logger = get_logger(__name__)

__all__ = [
    "MIN_BF16_PARAMETERS",
    "PRECISION_VARIABLE",
    "FrozenWeightsInBf16",
    "frozen_weights_blocker",
    "cpu_has_native_bf16",
    "has_accelerator",
    "keep_adapter_sums_in_float32",
    "precision_variable_kept",
    "resolve_cpu_bf16",
    "torch_threads",
    "training_precision",
    "weights_as_given",
]

#: Where `accelerate launch --mixed_precision` names the precision for its processes, and where transformers 4.x's
#: configs write their own bf16/fp16 choice (huggingface/transformers#29510; `hf_compat.accelerator_precision`).
PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"


@contextlib.contextmanager
def precision_variable_kept() -> Iterator[None]:
    """`PRECISION_VARIABLE` put back as it was (its value, or unset) when the block ends, whatever the block wrote."""
    previous = os.environ.get(PRECISION_VARIABLE)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PRECISION_VARIABLE, None)
        else:
            os.environ[PRECISION_VARIABLE] = previous


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


def _bf16_input(module, args):
    """Outside autocast (a forward the trainer does not wrap, e.g. a callback's `generate`), feed a bfloat16 weight
    bfloat16 inputs, as autocast would."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dtype != torch.bfloat16 and not torch.is_autocast_enabled(x.device.type):
        return (x.to(torch.bfloat16), *args[1:])
    return None


def _float32_result(module, args, output):
    if (
        isinstance(output, torch.Tensor)
        and output.dtype == torch.bfloat16
        and not torch.is_autocast_enabled(output.device.type)
    ):
        return output.float()
    return output


class FrozenWeightsInBf16(TrainerCallback):
    """The frozen float32 weights and biases of `model`'s linear layers held in bfloat16 while training runs.

    `on_train_begin` (after the data loader, the packing probe and accelerate's autocast wrapper are set up) puts a
    bfloat16 copy in place of each frozen float32 `nn.Linear` parameter and keeps the user's `Parameter` aside;
    `restore` (called by `during(trainer)` when `train()` returns or raises) puts the user's objects back, so every
    parameter has its original dtype, value and identity, and tied weights are tied again (a tied LM head gets its
    own bfloat16 copy; the embedding keeps the float32 original). `as_given()` puts them back for the length of a
    block (checkpoints are saved from the user's float32 weights). Trainable parameters are never touched.
    """

    def __init__(self):
        self._kept: list[tuple[torch.nn.Module, str, torch.nn.Parameter, torch.nn.Parameter]] = []
        self._hooks: list = []

    @property
    def active(self) -> bool:
        return bool(self._kept)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and not self._kept:
            self.cast(model)

    def cast(self, model) -> int:
        """Swap in the bfloat16 copies; return how many parameters were cast."""
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            swapped = False
            for name, param in list(module.named_parameters(recurse=False)):
                if param.requires_grad or param.dtype != torch.float32:
                    continue
                copy = torch.nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
                self._kept.append((module, name, param, copy))
                module._parameters[name] = copy
                swapped = True
            if swapped:
                self._hooks.append(module.register_forward_pre_hook(_bf16_input))
                self._hooks.append(module.register_forward_hook(_float32_result))
        return len(self._kept)

    def _swap(self, given: bool) -> None:
        for module, name, original, copy in self._kept:
            module._parameters[name] = original if given else copy

    def restore(self) -> None:
        """The user's parameters back in place (a no-op when nothing was cast)."""
        self._swap(given=True)
        for handle in self._hooks:
            handle.remove()
        self._kept, self._hooks = [], []

    @contextlib.contextmanager
    def as_given(self):
        """The user's float32 parameters in place for the length of the block (e.g. a checkpoint being saved)."""
        self._swap(given=True)
        try:
            yield
        finally:
            self._swap(given=False)

    @contextlib.contextmanager
    def during(self, trainer):
        """Be one of `trainer`'s callbacks for the length of the block; restore the model however it ends."""
        trainer.add_callback(self)
        try:
            yield self
        finally:
            self.restore()
            trainer.remove_callback(self)


def frozen_weights_blocker(trainer) -> str | None:
    """Why the frozen weights stay float32 in `trainer`'s run, or None when they are held in bfloat16: only under
    bfloat16 autocast, with `frozen_weights_bf16` on, and never under DeepSpeed or FSDP (which own the weights)."""
    args = trainer.args
    if not args.bf16 or args.fp16:
        return "no bfloat16 autocast"
    if not getattr(args, "frozen_weights_bf16", True):
        return "`frozen_weights_bf16=False`"
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return "DeepSpeed/FSDP own the weights"
    return None


@contextlib.contextmanager
def training_precision(trainer, notes=()):
    """Around `train()`: say the precision (`notes` from `resolve_cpu_bf16` and the checkpointing choice) in one log
    line; under bfloat16 on a CPU keep the LoRA sums in float32; hold the frozen weights in bfloat16 for the run
    (`FrozenWeightsInBf16`, kept as `trainer._msft_frozen`) unless `frozen_weights_blocker` says why not."""
    args, blocker = trainer.args, frozen_weights_blocker(trainer)
    if args.bf16 and (args.use_cpu or not has_accelerator()):
        keep_adapter_sums_in_float32(trainer.model)
    said = [note.rstrip(".") for note in notes if note]
    if blocker is None:
        said.append(
            "frozen weights held in bfloat16 while training (`frozen_weights_bf16`; the model's float32 "
            "parameters are put back, unchanged, when it ends)"
        )
    if said:
        logger.info("; ".join(said) + ".")
    frozen = FrozenWeightsInBf16()
    trainer._msft_frozen = frozen
    if blocker is not None:
        yield frozen
        return
    with frozen.during(trainer):
        yield frozen


def weights_as_given(trainer):
    """A block in which `trainer`'s model has the user's own parameters (a no-op outside `training_precision`)."""
    frozen = getattr(trainer, "_msft_frozen", None)
    return frozen.as_given() if frozen is not None else contextlib.nullcontext()


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
