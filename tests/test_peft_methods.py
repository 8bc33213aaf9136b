"""PEFT beyond LoRA: prompt tuning, p-tuning and prefix tuning train with MaskedSFTTrainer.

Their virtual tokens make the logits longer than `input_ids` (prompt tuning, p-tuning) or add a key/value prefix
(prefix tuning): packing is off for them, and the batch validator and the health guard count a row's first label as
trained where the virtual tokens make it a target.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import TrainerControl, TrainerState

from trl_masked_sft import AllMaskedBatchError, MaskedSFTTrainer, TrainingHealthGuard, validate_batch
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR
from trl_masked_sft.model_checks import first_label_is_target
from trl_masked_sft.packing import packing_is_exact, virtual_token_count
from trl_masked_sft.tiny import build_tiny_model

VIRTUAL = 4

PEFT_CONFIGS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL),
    "p_tuning": lambda: PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL, encoder_hidden_size=32
    ),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL),
}


def qa_rows(n: int = 16) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list(PEFT_CONFIGS))
def test_prompt_learning_methods_train_their_virtual_tokens(tokenizer, make_config, method):
    """Prompt tuning, p-tuning and prefix tuning train: finite losses that fall, every trainable tensor updated."""
    # Each step sees the whole dataset (one batch of 16 rows), so the first and last logged losses are comparable.
    trainer = MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        # Prefix tuning's key/value prefix does not survive activation checkpointing (plain TRL fails the same way).
        args=make_config(
            max_steps=8, learning_rate=3e-2, per_device_train_batch_size=16, activation_checkpointing=False
        ),
        train_dataset=qa_rows(),
        processing_class=tokenizer,
        peft_config=PEFT_CONFIGS[method](),
    )
    before = _trainable(trainer.model)
    assert before and virtual_token_count(trainer.model) == VIRTUAL

    trainer.train()

    after = _trainable(trainer.model)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(loss) for loss in losses) and len(losses) == 8
    assert losses[-1] < losses[0]
    assert [name for name in before if torch.equal(before[name], after[name])] == []


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_prompt_learning_batches_are_padded_not_packed_and_the_log_says_why(
    tokenizer, make_config, capture_logs, method
):
    """Packing can't give each packed row its own virtual tokens: batches stay padded, and the log says why."""
    said = capture_logs("trl_masked_sft", logging.INFO)
    trainer = MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_config(activation_checkpointing=False),
        train_dataset=qa_rows(),
        processing_class=tokenizer,
        peft_config=PEFT_CONFIGS[method](),
    )

    batch = next(iter(trainer.get_train_dataloader()))

    assert "attention_mask" in batch and "position_ids" not in batch
    assert any("prompt-learning PEFT adapter" in message and "padded, not packed" in message for message in said)


def test_packing_probe_declines_prompt_learning_models_without_running_them(tokenizer):
    """`packing_is_exact` is False for a prompt-learning model (no shape error), still True for LoRA."""
    pad = tokenizer.pad_token_id
    for factory in PEFT_CONFIGS.values():
        model = get_peft_model(build_tiny_model(tokenizer), factory())
        assert packing_is_exact(model, pad_token_id=pad) is False
    lora = get_peft_model(build_tiny_model(tokenizer), LoraConfig(task_type=TaskType.CAUSAL_LM, r=4))
    assert packing_is_exact(lora, pad_token_id=pad) is True


def test_virtual_token_count_is_zero_for_plain_and_lora_models(tokenizer):
    """Only prompt-learning adapters add virtual tokens."""
    model = build_tiny_model(tokenizer)

    assert virtual_token_count(model) == 0
    assert virtual_token_count(get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4))) == 0


def test_first_label_is_a_target_under_prompt_and_p_tuning_only(tokenizer):
    """Prompt tuning and p-tuning put a virtual token before label 0; prefix tuning, LoRA and plain models don't."""
    targets = {
        method: first_label_is_target(get_peft_model(build_tiny_model(tokenizer), factory()))
        for method, factory in PEFT_CONFIGS.items()
    }

    assert targets == {"prompt_tuning": True, "p_tuning": True, "prefix_tuning": False}
    assert first_label_is_target(build_tiny_model(tokenizer)) is False


def test_prompt_tuning_trains_label_zero_as_the_validator_counts_it(tokenizer):
    """Under prompt tuning a batch whose only label is at position 0 has a loss with a gradient: it trains."""
    model = get_peft_model(build_tiny_model(tokenizer), PEFT_CONFIGS["prompt_tuning"]())
    input_ids = torch.tensor([[50, 51, 52]])
    labels = torch.tensor([[50, -100, -100]])

    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()

    assert math.isfinite(loss.item()) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    validate_batch({"labels": labels}, first_label_is_target=True)
    with pytest.raises(AllMaskedBatchError):
        validate_batch({"labels": labels})


def test_health_guard_counts_label_zero_under_prompt_tuning(tokenizer, tmp_path):
    """A step whose only supervised label is a row's first is not stopped as empty when the model trains it."""
    from trl import SFTConfig

    model = get_peft_model(build_tiny_model(tokenizer), PEFT_CONFIGS["prompt_tuning"]())
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", save_strategy="no")
    state, control = TrainerState(), TrainerControl()
    labels = torch.tensor([[50, -100, -100]])

    guard = TrainingHealthGuard()
    guard.on_train_begin(args, state, control, model=model)
    guard.observe_loss(torch.tensor(2.0), num_items_in_batch=torch.tensor(0), labels=labels)
    guard.observe_grad_norm(torch.tensor(1.0))
    guard.on_pre_optimizer_step(args, state, control)  # no error: one token was trained

    plain = TrainingHealthGuard()
    plain.on_train_begin(args, state, control, model=build_tiny_model(tokenizer))
    plain.observe_loss(torch.tensor(2.0), num_items_in_batch=torch.tensor(0), labels=labels)
    plain.observe_grad_norm(torch.tensor(1.0))
    with pytest.raises(Exception, match="no supervised token"):
        plain.on_pre_optimizer_step(args, state, control)


def test_prefix_tuning_under_activation_checkpointing_is_refused_naming_the_field(tokenizer):
    """Prefix tuning with `activation_checkpointing=True` raises `ModelSetupError` naming the field and the fix."""
    from trl_masked_sft import ModelSetupError
    from trl_masked_sft.model_checks import check_prompt_learning

    model = get_peft_model(build_tiny_model(tokenizer), PEFT_CONFIGS["prefix_tuning"]())

    with pytest.raises(ModelSetupError, match=r"Prefix tuning .* `activation_checkpointing=True`.*Fix: set"):
        check_prompt_learning(model, activation_checkpointing=True)
    check_prompt_learning(model, activation_checkpointing=False)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_prompt_and_p_tuning_are_allowed_under_activation_checkpointing(tokenizer, method):
    """Prompt tuning and p-tuning train under activation checkpointing: the check lets them through."""
    from trl_masked_sft.model_checks import check_prompt_learning

    model = get_peft_model(build_tiny_model(tokenizer), PEFT_CONFIGS[method]())

    check_prompt_learning(model, activation_checkpointing=True)
    check_prompt_learning(build_tiny_model(tokenizer), activation_checkpointing=True)


@pytest.mark.skipif(
    TRANSFORMERS_MAJOR < 5,
    reason="transformers 4.x runs this forward without the error (its training under checkpointing is not checked "
    "here, so the refusal stays on both lines)",
)
def test_prefix_tuning_still_fails_under_activation_checkpointing_upstream(tokenizer):
    """The upstream failure `check_prompt_learning` guards against still happens (when not, drop its prefix rule)."""
    base = build_tiny_model(tokenizer)
    model = get_peft_model(base, PEFT_CONFIGS["prefix_tuning"]())
    model.train()
    base.gradient_checkpointing_enable()
    batch = tokenizer(["How many meters are there in 3 km?", "hi"], padding=True, return_tensors="pt")

    with pytest.raises(RuntimeError, match="must match the size"):
        model(**batch, use_cache=False)
