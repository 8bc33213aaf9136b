"""TrainingHealthGuard: a bad step stops the run before the optimizer applies it, and the last good checkpoint stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState

from trl_masked_sft import MaskedSFTTrainer, TrainingHealthError, TrainingHealthGuard, homework_lora_config
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR


def qa_rows(n: int = 32) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


class Snapshots(TrainerCallback):
    """The trainable weights after each optimizer step, keyed by step."""

    def __init__(self):
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.by_step[state.global_step] = _trainable(model)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _same_weights(saved: dict[str, torch.Tensor], snapshot: dict[str, torch.Tensor]) -> bool:
    """Compare a saved adapter file with an in-memory snapshot (PEFT drops the adapter name from saved keys)."""
    by_key = {n.replace(".default", ""): t for n, t in snapshot.items()}
    return len(saved) == len(by_key) and all(torch.equal(saved[k], by_key[k]) for k in saved)


def _nan_at_step(trainer, model, step: int):
    """A forward hook on the input embeddings that returns NaN during optimizer step `step` (1-based)."""

    def hook(module, args, output):
        return output * float("nan") if trainer.state.global_step + 1 == step else output

    return model.get_input_embeddings().register_forward_hook(hook)


def _lora_trainer(tokenizer, model, make_config, **overrides):
    settings = {
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "activation_checkpointing": False,
    }
    settings.update(overrides)
    snapshots = Snapshots()
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(**settings),
        train_dataset=qa_rows(),
        processing_class=tokenizer,
        peft_config=homework_lora_config(r=4),
        callbacks=[snapshots],
    )
    return trainer, snapshots


def test_nan_loss_at_step_k_stops_at_step_k_and_keeps_checkpoint_k_minus_1(tokenizer, model, make_config):
    """A NaN loss at step 3 stops the run at step 3; checkpoint-2 holds step 2's weights; step 3 is never applied."""
    trainer, snapshots = _lora_trainer(
        tokenizer, model, make_config, save_strategy="steps", save_steps=1, save_total_limit=None
    )
    _nan_at_step(trainer, model, 3)
    with pytest.raises(TrainingHealthError) as info:
        trainer.train()
    message = str(info.value)
    assert "Training stopped at step 3: the loss is nan (not finite)" in message
    assert "checkpoint-2; it was not overwritten" in message
    assert "Likely cause:" in message and "Fix: lower `learning_rate`" in message
    out = Path(trainer.args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert _same_weights(load_file(out / "checkpoint-2" / "adapter_model.safetensors"), snapshots.by_step[2])
    current = _trainable(trainer.model)
    assert all(torch.equal(current[n], snapshots.by_step[2][n]) for n in current)  # the NaN update was not applied
    assert all(torch.isfinite(t).all() for t in current.values())


def test_last_good_weights_are_saved_when_no_checkpoint_covers_them(tokenizer, model, make_config):
    """With checkpoints on but none at the previous step, the guard saves the last good weights before stopping."""
    trainer, snapshots = _lora_trainer(tokenizer, model, make_config, save_strategy="steps", save_steps=100)
    _nan_at_step(trainer, model, 3)
    with pytest.raises(TrainingHealthError, match=r"The last good weights \(step 2\) were saved to .*checkpoint-2"):
        trainer.train()
    saved = Path(trainer.args.output_dir) / "checkpoint-2"
    assert (saved / "trainer_state.json").is_file()
    assert _same_weights(load_file(saved / "adapter_model.safetensors"), snapshots.by_step[2])


def test_infinite_gradient_with_finite_loss_stops_naming_the_gradient_norm(tokenizer, model, make_config):
    """An inf gradient at step 2 (finite loss) stops at step 2, naming the gradient norm and the fix."""
    trainer, _ = _lora_trainer(tokenizer, model, make_config)
    param = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
    param.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.state.global_step == 1 else g)
    # transformers 4.x calls `on_pre_optimizer_step` after clipping, which turns the inf gradients into NaN (inf * 0)
    norm = "inf" if TRANSFORMERS_MAJOR >= 5 else "nan"
    with pytest.raises(
        TrainingHealthError, match=rf"(?s)step 2: the gradient norm is {norm} .*while the loss is [\d.]+"
    ):
        trainer.train()
    assert trainer.state.global_step == 1


def test_step_without_supervised_tokens_stops_naming_the_cause():
    """A step whose token count is 0 stops with the cause (truncation, template, collator) and the fix."""
    guard = TrainingHealthGuard()
    guard.observe_loss(torch.tensor(0.0), num_items_in_batch=torch.tensor(0))
    args = type("Args", (), {"gradient_accumulation_steps": 4, "output_dir": "/nonexistent", "save_strategy": "no"})
    with pytest.raises(
        TrainingHealthError, match=r"(?s)step 5: it has no supervised token in its 4 micro-batch.*max_length"
    ):
        guard.on_pre_optimizer_step(args, TrainerState(global_step=4), TrainerControl())


def test_guard_in_a_plain_trainer_reads_the_gradients_itself():
    """Without the trainer's hooks, the guard computes the gradient norm from the model and stops on NaN."""
    layer = torch.nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[float("nan"), 0.0]])
    args = type("Args", (), {"learning_rate": 1e-3, "max_grad_norm": 1.0, "output_dir": "/nonexistent"})
    with pytest.raises(TrainingHealthError, match=r"step 1: the gradient norm is nan"):
        TrainingHealthGuard().on_pre_optimizer_step(args, TrainerState(global_step=0), TrainerControl(), model=layer)


def test_health_checks_false_installs_no_guard_and_the_log_hides_the_nan(tokenizer, model, make_config):
    """`health_checks=False` keeps Trainer's behaviour: the run goes on and the logged loss is not NaN."""
    trainer, _ = _lora_trainer(tokenizer, model, make_config, health_checks=False, max_steps=3)
    assert not any(isinstance(cb, TrainingHealthGuard) for cb in trainer.callback_handler.callbacks)
    _nan_at_step(trainer, model, 2)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(v == v for v in logged)  # NaN filtered out of the log (logging_nan_inf_filter)


def test_healthy_run_is_untouched_by_the_guard(tokenizer, model, make_config):
    """A healthy run trains to the end with the guard installed by default."""
    trainer, snapshots = _lora_trainer(tokenizer, model, make_config, max_steps=3)
    assert any(isinstance(cb, TrainingHealthGuard) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    assert trainer.state.global_step == 3 and sorted(snapshots.by_step) == [1, 2, 3]
