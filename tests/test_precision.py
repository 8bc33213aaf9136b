"""Precision on a CPU (`precision.py`): bfloat16 chosen by the hardware and the model's size, LoRA sums in float32."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import TrainerCallback
from trl import SFTConfig

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


@pytest.mark.parametrize("launched", [None, "no", "bf16"])
def test_building_a_config_leaves_the_mixed_precision_variable_as_it_was(launched, make_config, monkeypatch):
    """`MaskedSFTConfig(bf16=True)` leaves `ACCELERATE_MIXED_PRECISION` as it found it (transformers 4.x's
    `TrainingArguments` writes it, and a process started from this one, e.g. a killed run resumed here, read it)."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched or "no")  # recorded: put back as found after the test
    if launched is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    make_config(bf16=True, use_cpu=True)
    make_config(bf16=False)
    assert os.environ.get("ACCELERATE_MIXED_PRECISION") == launched


@pytest.mark.parametrize("earlier", [MaskedSFTConfig, SFTConfig])
def test_a_float32_run_after_a_bf16_config_in_the_same_process_trains_in_float32(
    earlier, model, tokenizer, make_config, monkeypatch
):
    """Each trainer's accelerator takes its own config's precision: transformers 4.x writes a bf16 config's choice
    into `ACCELERATE_MIXED_PRECISION`, where every later config read it back (a float32 run trained in bf16)."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # recorded: put back as found after the test (a plain
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")  # `SFTConfig` on 4.x writes it)
    earlier(output_dir=str(make_config().output_dir), bf16=True, use_cpu=True, report_to="none")
    rows = [["What is 1 km in m?", 1000.0]] * 8
    float32 = MaskedSFTTrainer(
        model=model, args=make_config(bf16=False), train_dataset=rows, processing_class=tokenizer
    )
    assert float32.args.bf16 is False and float32.accelerator.mixed_precision == "no"
    bf16 = MaskedSFTTrainer(
        model=model, args=make_config(bf16=True, use_cpu=True), train_dataset=rows, processing_class=tokenizer
    )
    assert bf16.accelerator.mixed_precision == "bf16"


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


# ---------------------------------------------------------------------------------------------------- frozen weights


_ROWS = [["What is 1 km in m?", 1000.0], ["What is 2 kg in g?", 2000.0], ["What is 3 h in min?", 180.0]] * 4


def _snapshot(model) -> dict[str, tuple]:
    """Each parameter and buffer: its object, dtype and a copy of its values."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: (tensor, tensor.dtype, tensor.detach().clone()) for name, tensor in named}


def _assert_given_back(model, before: dict[str, tuple]) -> None:
    after = _snapshot(model)
    assert set(after) == set(before)
    for name, (tensor, dtype, values) in before.items():
        now = after[name]
        assert now[0] is tensor and now[1] == dtype, f"{name}: {now[1]} after training, {dtype} before"
        if not tensor.requires_grad:
            assert torch.equal(now[2], values), f"{name}: a frozen weight changed"


class _Watch(TrainerCallback):
    """Records the dtypes seen at each step; optionally raises, or runs the model outside autocast, at step 1."""

    def __init__(self, raise_at_step: int | None = None, forward_outside_autocast=None):
        self.seen: list[dict[str, torch.dtype]] = []
        self.raise_at_step, self.forward = raise_at_step, forward_outside_autocast
        self.outputs: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        dtypes = {name: param.dtype for name, param in model.named_parameters()}
        dtypes |= {
            f"state:{k}": v.dtype for s in optimizer.state.values() for k, v in s.items() if v.is_floating_point()
        }
        self.seen.append(dtypes)
        if self.forward is not None:
            self.outputs.append(self.forward(model))
        if state.global_step == self.raise_at_step:
            raise RuntimeError("stopped inside training")


def _bf16_trainer(model, tokenizer, make_config, callback, **overrides):
    args = make_config(bf16=True, use_cpu=True, **overrides)
    return MaskedSFTTrainer(
        model=model,
        args=args,
        train_dataset=_ROWS,
        processing_class=tokenizer,
        peft_config=homework_lora_config(),
        callbacks=[callback],
    )


def test_frozen_weights_are_bf16_while_training_and_the_users_own_after(model, tokenizer, make_config):
    """Under bf16 autocast the frozen linear weights are bfloat16 at every step; LoRA weights and the optimizer
    state are float32; after `train()` every parameter and buffer is the user's object, dtype and value again."""
    watch = _Watch()
    trainer = _bf16_trainer(model, tokenizer, make_config, watch)
    before = _snapshot(trainer.model)
    trainer.train()
    assert len(watch.seen) == 2
    for dtypes in watch.seen:
        base = {n: d for n, d in dtypes.items() if "base_layer" in n or n.endswith("lm_head.weight")}
        assert base and set(base.values()) == {torch.bfloat16}, base
        assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
        assert {d for n, d in dtypes.items() if n.startswith("state:")} == {torch.float32}
        assert {d for n, d in dtypes.items() if "embed_tokens" in n or "norm" in n} == {torch.float32}
    _assert_given_back(trainer.model, before)
    hooks = sum(len(m._forward_pre_hooks) for m in trainer.model.modules())
    assert hooks == 0, "the bfloat16 input hooks are removed with the copies"


def test_a_failure_inside_training_still_gives_the_model_back(model, tokenizer, make_config):
    """A callback that raises at step 1: the error reaches the caller, and the model has its own parameters back."""
    watch = _Watch(raise_at_step=1)
    trainer = _bf16_trainer(model, tokenizer, make_config, watch)
    before = _snapshot(trainer.model)
    with pytest.raises(RuntimeError, match="stopped inside training"):
        trainer.train()
    assert watch.seen[0]["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    _assert_given_back(trainer.model, before)


def test_frozen_weights_bf16_false_keeps_them_float32(model, tokenizer, make_config):
    """`frozen_weights_bf16=False`: autocast casts at each product, as in TRL; the weights stay float32."""
    watch = _Watch()
    trainer = _bf16_trainer(model, tokenizer, make_config, watch, frozen_weights_bf16=False)
    trainer.train()
    assert {d for n, d in watch.seen[0].items() if not n.startswith("state:")} == {torch.float32}


def test_holding_the_frozen_weights_in_bf16_gives_the_losses_autocast_gives(tokenizer, make_config):
    """The same products on the same bfloat16 values: the loss curve is autocast's to float rounding."""
    from trl_masked_sft.tiny import build_tiny_model

    curves = []
    for frozen in (True, False):
        trainer = _bf16_trainer(
            build_tiny_model(tokenizer), tokenizer, make_config, _Watch(), frozen_weights_bf16=frozen, max_steps=3
        )
        trainer.train()
        curves.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-5, atol=0)


def test_a_forward_outside_autocast_during_training_and_generate_after_work(model, tokenizer, make_config):
    """A callback's own forward (no autocast) meets bfloat16 weights: inputs are cast for it and its logits come back
    float32; `generate` after training runs on the float32 model."""
    ids = tokenizer("What is 1 km in m?", return_tensors="pt")["input_ids"]

    def forward(model):
        with torch.no_grad():
            return model(input_ids=ids).logits

    watch = _Watch(forward_outside_autocast=forward)
    trainer = _bf16_trainer(model, tokenizer, make_config, watch)
    trainer.train()
    assert [out.dtype for out in watch.outputs] == [torch.float32, torch.float32]
    trainer.model.eval()
    out = trainer.model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_a_tied_lm_head_gets_its_own_copy_and_is_tied_again_after(tokenizer, make_config):
    """With tied embeddings the LM head gets a bfloat16 copy while the embedding stays float32; after training the
    two are one parameter again."""
    from trl_masked_sft.tiny import build_tiny_model

    model = build_tiny_model(tokenizer)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    watch = _Watch()
    trainer = _bf16_trainer(model, tokenizer, make_config, watch)
    trainer.train()
    dtypes = watch.seen[0]
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.float32


def test_a_checkpoint_saved_mid_training_holds_the_users_float32_weights(model, tokenizer, make_config, tmp_path):
    """A full model (no PEFT) with frozen layers, saved at every step: every tensor in the checkpoint is float32 and
    equal to the user's frozen values."""
    from safetensors.torch import load_file

    for name, param in model.named_parameters():
        param.requires_grad = "layers.1." in name  # the rest frozen by the user
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = make_config(bf16=True, use_cpu=True, save_strategy="steps", save_steps=1, save_total_limit=2, max_steps=2)
    watch = _Watch()
    trainer = MaskedSFTTrainer(
        model=model, args=args, train_dataset=_ROWS, processing_class=tokenizer, callbacks=[watch]
    )
    trainer.train()
    assert watch.seen[0]["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16  # the path was taken
    saved = load_file(str(Path(args.output_dir) / "checkpoint-1" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    for name, values in frozen.items():
        if name in saved:
            assert torch.equal(saved[name], values), name
