"""Precision on a CPU (`precision.py`): bfloat16 chosen by the hardware and the model's size, LoRA sums in float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.precision import (
    MIN_BF16_PARAMETERS,
    cpu_has_native_bf16,
    has_accelerator,
    keep_adapter_sums_in_float32,
    resolve_cpu_bf16,
)


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {
        flag for line in text.splitlines() if line.lower().startswith(("flags", "features")) for flag in line.split()
    }


def _lora_model(model, **lora):
    peft_model = get_peft_model(model, homework_lora_config(**lora))
    for name, param in peft_model.named_parameters():  # a young adapter: B small, far below bf16's resolution
        if "lora_B" in name:
            torch.nn.init.constant_(param, 1e-5)
    return peft_model


def test_native_bf16_is_read_from_the_cpu_flags():
    """AVX512-BF16 or AMX-BF16 (x86) or BF16 (Arm) in /proc/cpuinfo means native bfloat16; nothing else does."""
    flags = _cpuinfo_flags()
    assert cpu_has_native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_a_young_adapter_is_rounded_away_under_bf16_autocast_without_the_float32_sum(model):
    """PEFT's bf16 sum loses an adapter output below bf16's resolution; with the base output in float32 it stays."""
    peft_model = _lora_model(model)
    layer = next(m for n, m in peft_model.named_modules() if n.endswith("q_proj"))
    x = torch.randn(4, 7, layer.base_layer.in_features)

    def adapter_part() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x).float() - layer.base_layer(x).float()

    with torch.no_grad():  # the adapter's contribution in float32
        expected = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    lost = adapter_part()
    hooked = keep_adapter_sums_in_float32(peft_model)
    kept = adapter_part()
    assert hooked == sum(1 for n, _ in peft_model.named_modules() if n.endswith("base_layer"))
    assert lost.abs().mean() < 0.2 * expected.abs().mean(), "the bf16 sum no longer loses the adapter: test is moot"
    torch.testing.assert_close(kept, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_the_float32_sum_is_a_no_op_outside_autocast(model):
    """In float32 the hook changes nothing: the same logits with and without it."""
    peft_model = _lora_model(model)
    ids = torch.randint(5, 100, (2, 12))
    with torch.no_grad():
        before = peft_model(input_ids=ids).logits
        keep_adapter_sums_in_float32(peft_model)
        keep_adapter_sums_in_float32(peft_model)  # installed once per layer
        after = peft_model(input_ids=ids).logits
    assert torch.equal(before, after)
    hooks = sum(len(m._forward_hooks) for n, m in peft_model.named_modules() if n.endswith("base_layer"))
    assert hooks == sum(1 for n, _ in peft_model.named_modules() if n.endswith("base_layer"))


def test_a_small_model_stays_in_float32_on_a_cpu(model, make_config, tokenizer):
    """Below MIN_BF16_PARAMETERS bfloat16 gains nothing: the trainer keeps float32 and says nothing."""
    assert sum(p.numel() for p in model.parameters()) < MIN_BF16_PARAMETERS
    args = make_config()
    assert args.bf16 is False
    trainer = MaskedSFTTrainer(
        model=model, args=args, train_dataset=[["What is 1 km in m?", 1000.0]] * 8, processing_class=tokenizer
    )
    assert trainer.args.bf16 is False


def test_an_explicit_bf16_false_is_never_overridden(make_config):
    """`bf16=False` set by the user wins, whatever the model and the CPU."""
    big = torch.nn.Linear(5000, 5000)  # 25M parameters
    args = make_config(bf16=False)
    assert resolve_cpu_bf16(big, args) is None and args.bf16 is False


@pytest.mark.skipif(has_accelerator(), reason="the CPU rule applies only where no accelerator is present")
def test_a_large_model_trains_in_bf16_exactly_where_the_cpu_has_it(make_config):
    """A model of at least MIN_BF16_PARAMETERS gets bf16 autocast (and `use_cpu`) iff the CPU computes bf16."""
    big = torch.nn.Linear(5000, 5000)
    args = make_config()
    note = resolve_cpu_bf16(big, args)
    assert args.bf16 is cpu_has_native_bf16()
    if cpu_has_native_bf16():
        assert args.use_cpu is True and args.mixed_precision == "bf16"
        assert "25M parameters" in note and "`bf16=False`" in note
    else:
        assert note is None


def test_the_config_keeps_the_users_choice_and_marks_only_an_unset_bf16(tmp_path):
    """`bf16` unset is left to the trainer; set either way, it is the user's."""
    unset = MaskedSFTConfig(output_dir=str(tmp_path), use_cpu=True)
    assert unset._bf16_auto is True and unset.bf16 is False
    chosen = MaskedSFTConfig(output_dir=str(tmp_path), bf16=False)
    assert chosen._bf16_auto is False
