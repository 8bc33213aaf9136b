"""`SupervisedLoss` (`score_supervised_only`): only supervised positions go through the LM head, and nothing else
changes — the loss, the gradients and TRL's logged metrics equal TRL's own path (the switch off) on the same batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import PromptTuningConfig
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from two_ranks import run_two_ranks

import trl_masked_sft.loss as loss_module
from trl_masked_sft import MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.hf_compat import MASK_LOGITS_TO_KEEP
from trl_masked_sft.loss import supervised_logits_are_exact
from trl_masked_sft.tiny import build_tiny_model

IGNORE = -100
ATOL = 1e-5


def qa_rows(n: int = 16) -> list[list[str]]:
    """`[question, answer]` rows with prompts several times longer than their answers, of uneven lengths."""
    return [
        [f"Question {i}: repeat the digit {'please ' * (i % 5)}now.", " " + "7" * (1 + (i * 7) % 9)] for i in range(n)
    ]


def dataset(kind: str, tokenizer) -> tuple[object, dict]:
    """The same kind of rows in each data format the trainer accepts, and the config fields the format needs."""
    rows = qa_rows()
    if kind == "prompt_completion":
        return Dataset.from_dict({"prompt": [q for q, _ in rows], "completion": [a for _, a in rows]}), {}
    if kind == "question_answer":
        return rows, {}
    if kind == "messages":
        conversations = [
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]
            + [{"role": "assistant", "content": a.strip()}]
            for q, a in rows
        ]
        return Dataset.from_dict({"messages": conversations}), {}
    if kind == "text_template":
        texts = [f"### Question: {q}\n### Answer:{a}" for q, a in rows]
        return Dataset.from_dict({"text": texts}), {"response_template": "### Answer:"}
    if kind == "pre_tokenized":
        ids = [tokenizer(q)["input_ids"] + tokenizer(a)["input_ids"] for q, a in rows]
        masks = [[0] * len(tokenizer(q)["input_ids"]) + [1] * len(tokenizer(a)["input_ids"]) for q, a in rows]
        return Dataset.from_dict({"input_ids": ids, "completion_mask": masks}), {}
    if kind == "whole_sequence":  # completion_only_loss=False: every position is supervised
        return rows, {"completion_only_loss": False}
    raise ValueError(kind)


def build(tokenizer, make_config, *, on: bool, data, peft=True, model=None, **overrides) -> MaskedSFTTrainer:
    """A trainer with the same initial weights (LoRA B not zero, so every adapter tensor gets a gradient)."""
    settings = {"activation_checkpointing": False, "seed": 1, "per_device_train_batch_size": 8, **overrides}
    torch.manual_seed(0)
    peft_config = homework_lora_config(r=4, init_lora_weights=False) if peft is True else peft or None
    return MaskedSFTTrainer(
        model if model is not None else build_tiny_model(tokenizer),
        args=make_config(score_supervised_only=on, **settings),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


class HeadRows:
    """Records how many positions each call of the LM head module projects (in train mode: the one-time probe of
    `supervised_logits_are_exact` runs in eval mode and is left out; `eval_mode=True` records those calls instead)."""

    def __init__(self, trainer, eval_mode: bool = False):
        self.rows: list[int] = []

        def record(module, args, out):
            if module.training != eval_mode:
                self.rows.append(args[0].shape[:-1].numel())

        self.handle = trainer.model.get_output_embeddings().register_forward_hook(record)


def one_step(trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, list], int, list[int]]:
    """compute_loss + backward on the first training batch: loss, gradients, logged metrics, supervised count, and
    the positions the LM head module projected."""
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    supervised = int((inputs["labels"][:, 1:] != IGNORE).sum())
    spy = HeadRows(trainer)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=torch.tensor(supervised))
    loss.backward()
    spy.handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics, supervised, spy.rows


def assert_same_step(ours, trls):
    loss, grads, metrics, supervised, rows = ours
    trl_loss, trl_grads, trl_metrics, trl_supervised, trl_rows = trls
    assert supervised == trl_supervised
    assert rows == [supervised]  # our path: the head projects the supervised positions, once
    assert trl_rows == []  # TRL's fused head reads `lm_head.weight` directly
    torch.testing.assert_close(loss, trl_loss, atol=ATOL, rtol=0)
    assert set(grads) == set(trl_grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=ATOL, rtol=0, msg=name)
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3
    assert metrics.keys() == trl_metrics.keys() == {"entropy", "mean_token_accuracy", "num_tokens"}
    assert metrics["num_tokens"] == trl_metrics["num_tokens"]
    for key in ("entropy", "mean_token_accuracy"):
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=ATOL), key


@pytest.mark.parametrize(
    "kind", ["prompt_completion", "question_answer", "messages", "text_template", "pre_tokenized", "whole_sequence"]
)
def test_loss_gradients_and_metrics_equal_trls_path_for_every_data_format(tokenizer, make_config, kind):
    """Prompt/completion, [question, answer], messages, text with a template, pre-tokenized rows and whole-sequence
    loss: the same loss, LoRA gradients (1e-5) and logged metrics with the switch on and off."""
    data, extra = dataset(kind, tokenizer)
    ours = one_step(build(tokenizer, make_config, on=True, data=data, **extra))
    trls = one_step(build(tokenizer, make_config, on=False, data=data, **extra))
    assert_same_step(ours, trls)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_full_fine_tuning_gradients_equal_trls_path_including_the_lm_head(tokenizer, make_config, packed):
    """Without PEFT every weight, the LM head's included, gets the same gradient, on packed and padded batches."""
    data, _ = dataset("prompt_completion", tokenizer)
    ours = one_step(build(tokenizer, make_config, on=True, data=data, peft=False, pack_within_batch=packed))
    trls = one_step(build(tokenizer, make_config, on=False, data=data, peft=False, pack_within_batch=packed))
    assert_same_step(ours, trls)
    assert "lm_head.weight" in ours[1]


def test_dft_loss_equals_trls_dft_loss(tokenizer, make_config):
    """`loss_type="dft"` weighs each token's loss by its probability, as TRL does."""
    data, _ = dataset("prompt_completion", tokenizer)
    ours = one_step(build(tokenizer, make_config, on=True, data=data, loss_type="dft"))
    trls = one_step(build(tokenizer, make_config, on=False, data=data, loss_type="dft"))
    assert_same_step(ours, trls)


def _train(tokenizer, make_config, on: bool, **overrides):
    data, _ = dataset("question_answer", tokenizer)
    settings = {"max_steps": 3, "optim": "sgd", "learning_rate": 1e-3, "max_grad_norm": 0.0, **overrides}
    trainer = build(tokenizer, make_config, on=on, data=data, peft=homework_lora_config(r=4), **settings)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return logs, update


@pytest.mark.slow
@pytest.mark.parametrize("packed", [True, False], ids=["pack_within_batch", "padded"])
def test_training_with_gradient_accumulation_logs_and_updates_exactly_as_trls_path(tokenizer, make_config, packed):
    """Three optimizer steps of 4 x 2 accumulation: the same logged loss, grad norm, entropy, accuracy and token
    count at every step, and the same adapter weights at the end (1e-5)."""
    settings = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "pack_within_batch": packed}
    ours, our_weights = _train(tokenizer, make_config, True, **settings)
    trls, trl_weights = _train(tokenizer, make_config, False, **settings)
    assert len(ours) == len(trls) == 3
    for mine, theirs in zip(ours, trls, strict=True):
        assert mine["num_tokens"] == theirs["num_tokens"]
        assert ("grad_norm" in mine) == ("grad_norm" in theirs)  # 4.x logs it only with `max_grad_norm` > 0
        for key in [k for k in ("loss", "grad_norm", "entropy", "mean_token_accuracy") if k in theirs]:
            assert mine[key] == pytest.approx(theirs[key], abs=ATOL), key
    assert max(float(u.abs().max()) for u in our_weights.values()) > 1e-4
    for name, update in our_weights.items():
        torch.testing.assert_close(update, trl_weights[name], atol=ATOL, rtol=0, msg=name)


def test_evaluation_equals_trls_path_and_predictions_still_return_logits(tokenizer, make_config):
    """`evaluate()` logs the same loss, entropy and accuracy; `predict()` (which needs logits) takes TRL's path."""
    data, _ = dataset("question_answer", tokenizer)
    results, projected = {}, {}
    for on in (True, False):
        trainer = build(tokenizer, make_config, on=on, data=data, per_device_eval_batch_size=8)
        spy = HeadRows(trainer, eval_mode=True)
        results[on] = trainer.evaluate(eval_dataset=data)
        projected[on] = spy.rows
    for key in ("eval_loss", "eval_entropy", "eval_mean_token_accuracy"):
        assert results[True][key] == pytest.approx(results[False][key], abs=ATOL), key
    # the probe's two calls (12 and 6 positions), then each eval batch's supervised positions; none on TRL's path
    assert len(projected[True]) == 4 and projected[False] == []
    trainer = build(tokenizer, make_config, on=True, data=data)
    with pytest.warns(FutureWarning, match="return_outputs=True"):  # TRL's path, which recomputes the logits
        predictions = trainer.predict(trainer.train_dataset)
    assert predictions.predictions.shape[0] == len(data) and predictions.predictions.shape[-1] == len(tokenizer)


def test_switch_off_takes_trls_path_and_says_so_once(tokenizer, make_config, capture_logs):
    """`score_supervised_only=False`: TRL's fused head scores every batch; the log says why, once."""
    records = capture_logs("trl_masked_sft.loss", level=20)
    data, _ = dataset("prompt_completion", tokenizer)
    trainer = build(tokenizer, make_config, on=False, data=data)
    *_, rows = one_step(trainer)
    one_step(trainer)
    assert rows == []
    assert [r for r in records if "score_supervised_only" in r] == [
        "`score_supervised_only`: the loss takes TRL's path: `score_supervised_only=False`."
    ]


def test_switch_on_says_once_that_only_supervised_positions_are_projected(tokenizer, make_config, capture_logs):
    """The default path is announced once, not at every step."""
    records = capture_logs("trl_masked_sft.loss", level=20)
    data, _ = dataset("prompt_completion", tokenizer)
    trainer = build(tokenizer, make_config, on=True, data=data)
    one_step(trainer)
    one_step(trainer)
    assert records == ["`score_supervised_only`: only the supervised positions are projected through the LM head."]


def test_prompt_tuning_falls_back_to_trls_path_and_trains(tokenizer, make_config, capture_logs):
    """Prompt-learning PEFT prepends virtual tokens (positions shift): TRL's path takes it, and training runs."""
    records = capture_logs("trl_masked_sft.loss", level=20)
    data, _ = dataset("prompt_completion", tokenizer)
    peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    trainer = build(tokenizer, make_config, on=True, data=data, peft=peft_config, max_steps=2)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any("prompt-learning PEFT" in r for r in records), records


class _IgnoresLogitsToKeep(LlamaForCausalLM):
    """A model whose forward takes `logits_to_keep` but returns every position's logits (as remote code may), and
    that flattens the positions before its LM head (so a hook on the head can't narrow them either, on 4.x)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden.flatten(0, 1)).unflatten(0, hidden.shape[:2]))


def test_a_model_that_ignores_logits_to_keep_is_detected_and_takes_trls_path(tokenizer, make_config, capture_logs):
    """The one-time probe finds the full logits where a selection was asked for, and TRL's path trains exactly."""
    records = capture_logs("trl_masked_sft.loss", level=20)
    reference = build_tiny_model(tokenizer)
    model = _IgnoresLogitsToKeep(reference.config)
    model.load_state_dict(reference.state_dict())
    assert supervised_logits_are_exact(reference) and not supervised_logits_are_exact(model)
    data, _ = dataset("prompt_completion", tokenizer)
    loss, *_, rows = one_step(build(tokenizer, make_config, on=True, data=data, model=model))
    trl_loss, *_ = one_step(build(tokenizer, make_config, on=False, data=data))
    assert rows == [] and torch.isfinite(loss)
    torch.testing.assert_close(loss, trl_loss, atol=ATOL, rtol=0)
    # transformers 5.x selects through `logits_to_keep`; 4.x through a hook on the LM head
    said = "does not return the logits of a boolean" if MASK_LOGITS_TO_KEEP else "LM head's selected positions"
    assert any(said in r for r in records), records


def test_a_batch_with_too_many_supervised_logits_takes_trls_chunked_path(
    tokenizer, make_config, capture_logs, monkeypatch
):
    """Above `MAX_LOGITS` the batch is scored by TRL's chunked head (bounded memory), with the same loss."""
    monkeypatch.setattr(loss_module, "MAX_LOGITS", 10)
    records = capture_logs("trl_masked_sft.loss", level=20)
    data, _ = dataset("prompt_completion", tokenizer)
    loss, *_, rows = one_step(build(tokenizer, make_config, on=True, data=data))
    monkeypatch.undo()
    ours, *_ = one_step(build(tokenizer, make_config, on=True, data=data))
    assert rows == []
    torch.testing.assert_close(loss, ours, atol=ATOL, rtol=0)
    assert any("more than 10 supervised logits in one batch" in r for r in records), records


@pytest.mark.slow
def test_two_processes_train_exactly_as_trls_path(tmp_path):
    """Under DDP (2 CPU processes, gloo), accumulation and packing: the same logs and adapter weights on both paths,
    the same on both ranks."""
    script = Path(__file__).parent / "scripts" / "ddp_loss.py"
    ranks = run_two_ranks(script, tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:
        assert rank["on"]["path"] is None and rank["off"]["path"] == "`score_supervised_only=False`"
        assert len(rank["on"]["logs"]) == len(rank["off"]["logs"]) == 3
        for mine, theirs in zip(rank["on"]["logs"], rank["off"]["logs"], strict=True):
            assert mine == pytest.approx(theirs, abs=ATOL)
        torch.testing.assert_close(
            torch.tensor(rank["on"]["weights"]), torch.tensor(rank["off"]["weights"]), atol=ATOL, rtol=0
        )
    assert ranks[0]["on"]["weights"] == ranks[1]["on"]["weights"]  # DDP kept the replicas in step
