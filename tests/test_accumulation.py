"""Gradient accumulation and masking: 8 x 4 accumulation steps trains exactly like 32 x 1 on uneven completions."""

from __future__ import annotations

import pytest
import torch

from trl_masked_sft import MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

IGNORE = -100


def uneven_rows(n: int = 64) -> list[list[str]]:
    """Completions of 2 to 41 tokens (plus eos), so micro-batches hold very different numbers of supervised tokens."""
    return [[f"Question {i}: repeat the digit.", " " + "7" * (1 if i % 3 else 1 + (i * 7) % 40)] for i in range(n)]


def _train(tokenizer, model, make_config, batch_size: int, accumulation: int, output: str):
    config = make_config(
        output_dir=output,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        optim="sgd",  # Adam's first steps normalise the gradient away; SGD's update is the gradient itself
        learning_rate=0.05,
        max_grad_norm=0.0,
        activation_checkpointing=False,
        seed=3,
    )
    trainer = MaskedSFTTrainer(
        model,
        args=config,
        train_dataset=uneven_rows(),
        processing_class=tokenizer,
        peft_config=homework_lora_config(r=4),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    first_window = [batch for _, batch in zip(range(accumulation), trainer.get_train_dataloader(), strict=False)]
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, update, losses, first_window


@pytest.mark.slow
def test_accumulation_8x4_equals_32x1_in_loss_and_adapter_update(tokenizer, make_config, tmp_path):
    """Per-device 8 x accumulation 4 and 32 x 1 log the same losses and make the same adapter update (1e-5)."""
    from trl_masked_sft.tiny import build_tiny_model

    small, small_update, small_losses, window = _train(
        tokenizer, build_tiny_model(tokenizer), make_config, 8, 4, str(tmp_path / "a")
    )
    _, big_update, big_losses, _ = _train(
        tokenizer, build_tiny_model(tokenizer), make_config, 32, 1, str(tmp_path / "b")
    )

    assert small_losses == pytest.approx(big_losses, abs=1e-5)
    assert min(u.abs().max() for u in big_update.values()) > 1e-4  # every adapter tensor moved
    for name in big_update:
        torch.testing.assert_close(small_update[name], big_update[name], atol=1e-5, rtol=0, msg=name)

    # The rows make a normalisation bug visible: per-micro-batch token counts differ a lot, so averaging the four
    # micro-batch means (instead of dividing the summed NLL by all tokens of the window) would change the loss.
    counts = [int((b["labels"][:, 1:] != IGNORE).sum()) for b in window]
    assert max(counts) > 1.3 * min(counts), counts


def test_loss_is_the_token_mean_over_the_whole_accumulation_window(tokenizer, model, make_config):
    """The step loss is the summed completion-token NLL of all 4 micro-batches over their total token count."""
    config = make_config(
        per_device_train_batch_size=8, gradient_accumulation_steps=4, max_steps=1, activation_checkpointing=False
    )
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=uneven_rows(32), processing_class=tokenizer)
    window = [batch for _, batch in zip(range(4), trainer.get_train_dataloader(), strict=False)]
    total_nll, total_tokens, means = 0.0, 0, []
    model.eval()
    with torch.no_grad():
        for batch in window:
            inputs = {k: v for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
            # the batch as the trainer gets it (padded or packed); no cache, as in training (transformers 4.x finds
            # packed rows from `position_ids` only without one)
            logits = model(**inputs, use_cache=False).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.double().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            tokens = int((targets != IGNORE).sum())
            total_nll, total_tokens = total_nll + nll.item(), total_tokens + tokens
            means.append(nll.item() / tokens)
    trainer.train()
    logged = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    rounding = 1e-5 if TRANSFORMERS_MAJOR >= 5 else 5e-5  # transformers 4.x logs the loss to 4 decimals
    assert logged == pytest.approx(total_nll / total_tokens, abs=rounding)
    assert abs(sum(means) / len(means) - total_nll / total_tokens) > 1e-4  # the mean of means would be wrong
