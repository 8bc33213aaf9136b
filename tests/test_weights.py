"""Per-message weights: the weighted loss `Σ w·CE / Σ w` is a hand computation, invariant to gradient accumulation and
to the number of processes; without weights nothing changes (no column, the same numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from two_ranks import run_two_ranks

from trl_masked_sft import MaskedSFTTrainer, PreparationPipeline, chat_labels, homework_lora_config
from trl_masked_sft.errors import DatasetFormatError, DatasetTypeError
from trl_masked_sft.masking import IGNORE_INDEX, WEIGHTS
from trl_masked_sft.tiny import build_tiny_model
from trl_masked_sft.weights import WeightedCollator

ROW_WEIGHTS = (0.5, 2.0, None, 1.5, 0.25, 3.0, None, 1.0)


def weighted_rows(n: int = 32) -> list[dict]:
    """One reply per row, of 1 to 9 digits, weighted by `ROW_WEIGHTS` (None: no key, weight 1)."""
    rows = []
    for i in range(n):
        reply = {"role": "assistant", "content": "7" * (1 + (i * 7) % 9)}
        if ROW_WEIGHTS[i % len(ROW_WEIGHTS)] is not None:
            reply["weight"] = ROW_WEIGHTS[i % len(ROW_WEIGHTS)]
        rows.append({"messages": [{"role": "user", "content": f"Question {i}: repeat the digit."}, reply]})
    return rows


def _trainer(tokenizer, model, make_config, rows, peft_config=None, **overrides):
    settings = {"per_device_train_batch_size": 8, "activation_checkpointing": False, "seed": 3}
    args = make_config(**{**settings, **overrides})
    return MaskedSFTTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=peft_config)


@pytest.mark.parametrize("pack", [True, False])
def test_weighted_loss_equals_a_hand_computed_weighted_cross_entropy(tokenizer, model, make_config, pack):
    """One batch: the trainer's loss is Σ_rows w_r Σ_t CE / Σ_rows w_r n_r, computed from each row alone (1e-5)."""
    rows = weighted_rows(8)
    trainer = _trainer(tokenizer, model, make_config, rows, pack_within_batch=pack)
    batch = next(iter(trainer.get_train_dataloader()))
    assert WEIGHTS in batch
    count = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=count).detach()

    numerator, denominator = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for row in rows:  # each row alone, unpadded, with its reply's weight
            plain = chat_labels(tokenizer, [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]])
            weight = row["messages"][-1].get("weight", 1.0)
            logits = model(input_ids=torch.tensor([plain.input_ids])).logits[0, :-1]
            targets = torch.tensor(plain.labels[1:])
            ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            numerator += weight * float(ce)
            denominator += weight * int((targets != IGNORE_INDEX).sum())
    assert float(count) == pytest.approx(denominator, abs=1e-5)
    assert float(loss) == pytest.approx(numerator / denominator, abs=1e-5)


def test_equal_weights_give_the_unweighted_loss(tokenizer, model, make_config):
    """Weight 2 on every reply: the same loss as no weights (Σ w·CE / Σ w is scale-free)."""
    rows = weighted_rows(8)
    doubled = [{"messages": [r["messages"][0], {**r["messages"][1], "weight": 2.0}]} for r in rows]
    plain = [
        {"messages": [r["messages"][0], {"role": "assistant", "content": r["messages"][1]["content"]}]} for r in rows
    ]
    losses = []
    for data in (doubled, plain):
        trainer = _trainer(tokenizer, model, make_config, data)
        batch = next(iter(trainer.get_train_dataloader()))
        count = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        losses.append(float(trainer.compute_loss(model, dict(batch), num_items_in_batch=count).detach()))
        assert (WEIGHTS in batch) is (data is doubled)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def _train(tokenizer, make_config, batch_size: int, accumulation: int, output: str):
    trainer = _trainer(
        tokenizer,
        build_tiny_model(tokenizer),
        make_config,
        weighted_rows(64),
        output_dir=output,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        optim="sgd",
        learning_rate=0.05,
        max_grad_norm=0.0,
        peft_config=homework_lora_config(r=4),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
    return update, [e["loss"] for e in trainer.state.log_history if "loss" in e]


@pytest.mark.slow
def test_weighted_accumulation_4x8_equals_1x32(tokenizer, make_config, tmp_path):
    """Per-device 8 × accumulation 4 and 32 × 1 log the same weighted losses and make the same update (1e-5)."""
    small_update, small_losses = _train(tokenizer, make_config, 8, 4, str(tmp_path / "a"))
    big_update, big_losses = _train(tokenizer, make_config, 32, 1, str(tmp_path / "b"))
    assert small_losses == pytest.approx(big_losses, abs=1e-5)
    assert max(u.abs().max() for u in big_update.values()) > 1e-4
    for name in big_update:
        torch.testing.assert_close(small_update[name], big_update[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
def test_two_processes_train_as_one_on_weighted_rows(tmp_path, tokenizer, make_config):
    """2 CPU processes (gloo) × 4 rows × accumulation 2 log the same weighted losses and end with the same adapter
    weights as 1 process × 8 rows × accumulation 2 (1e-5)."""
    script = Path(__file__).parent / "scripts" / "ddp_weights.py"
    ranks = run_two_ranks(script, tmp_path)
    sys.path.insert(0, str(script.parent))
    try:
        from ddp_weights import run  # the same run, in this one process, 8 rows per micro-batch
    finally:
        sys.path.remove(str(script.parent))
    alone = run(str(tmp_path / "alone"), batch_size=8)
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["losses"] == pytest.approx(alone["losses"], abs=1e-5)
        torch.testing.assert_close(torch.tensor(rank["weights"]), torch.tensor(alone["weights"]), atol=1e-5, rtol=0)


def test_weights_follow_the_labels_through_padding_sides_and_packing(tokenizer):
    """The collator wrapper lays each weight where its label goes: right or left padding, padding-free."""
    from trl_masked_sft import DataCollatorForCompletionOnlyLM

    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], WEIGHTS: [0.0, 0.0, 0.5, 0.5]},
        {"input_ids": [5, 6], "labels": [-100, 6], WEIGHTS: [0.0, 3.0]},
        {"input_ids": [9, 9, 9], "labels": [-100, 9, 9]},  # no weights: 1.0 on its supervised tokens
    ]
    for side, free in (("right", False), ("left", False), ("right", True)):
        tokenizer.padding_side = side
        batch = WeightedCollator(DataCollatorForCompletionOnlyLM(tokenizer=tokenizer, padding_free=free))(rows)
        trained = batch["labels"] != IGNORE_INDEX
        assert torch.equal(batch[WEIGHTS] != 0, trained)
        assert sorted(batch[WEIGHTS][trained].tolist()) == [0.5, 0.5, 1.0, 1.0, 3.0]


def test_per_message_weights_land_on_their_messages_tokens(tokenizer):
    """Two replies weighted 0.5 and 2: each reply's text and stop token carry its weight, nothing else does."""
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "weight": 0.5},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Once more", "weight": 2},
    ]
    mask = chat_labels(tokenizer, messages)
    by_weight: dict[float, list[int]] = {}
    for token, label, weight in zip(mask.input_ids, mask.labels, mask.weights, strict=True):
        assert (weight > 0) is (label != IGNORE_INDEX)
        if weight:
            by_weight.setdefault(weight, []).append(token)
    assert {w: tokenizer.decode(t) for w, t in by_weight.items()} == {
        0.5: "Hello there<|im_end|>",
        2.0: "Once more<|im_end|>",
    }
    assert chat_labels(tokenizer, [{k: v for k, v in m.items() if k != "weight"} for m in messages]).weights is None


def test_weight_zero_is_train_false(tokenizer):
    """A reply with weight 0 is masked exactly as `train: false` masks it."""
    base = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    base += [{"role": "user", "content": "Again"}, {"role": "assistant", "content": "Bye"}]
    zero = [*base[:1], {**base[1], "weight": 0}, *base[2:]]
    off = [*base[:1], {**base[1], "train": False}, *base[2:]]
    assert chat_labels(tokenizer, zero).labels == chat_labels(tokenizer, off).labels
    assert tokenizer.decode([t for t in chat_labels(tokenizer, off).labels if t != IGNORE_INDEX]) == "Bye<|im_end|>"


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        ("high", DatasetTypeError, r"Row 0 of the train dataset: message 1 has `weight` = 'high' \(str\).*Fix"),
        (
            -1.0,
            DatasetFormatError,
            r"Row 0 of the train dataset: message 1 has `weight` = -1.0.*finite number ≥ 0.*Fix",
        ),
        (float("nan"), DatasetFormatError, r"message 1 has `weight` = nan.*Fix"),
        (True, DatasetTypeError, r"message 1 has `weight` = True \(bool\)"),
    ],
)
def test_bad_weights_are_refused_naming_row_value_and_fix(tokenizer, weight, error, match):
    """Non-numeric, negative, NaN and bool weights raise, naming the row, the message, the value and the fix."""
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo", "weight": weight}]}
    ]
    with pytest.raises(error, match=match):
        PreparationPipeline.from_config(tokenizer).prepare(rows)


def test_unweighted_data_has_no_weight_column_and_no_wrapper(tokenizer, model, make_config):
    """Without a weight, the prepared rows and the batches are exactly today's: no `loss_weights`, no wrapper."""
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}]} for i in range(8)
    ]
    trainer = _trainer(tokenizer, model, make_config, rows)
    assert WEIGHTS not in trainer.train_dataset.column_names
    loader = trainer.get_train_dataloader()
    assert not isinstance(loader.collate_fn, WeightedCollator)
    assert WEIGHTS not in next(iter(loader))
    assert trainer.audit_reports["train"].token_weights is None


def test_the_audit_reports_the_weight_spread(tokenizer):
    """min/mean/max of the weights over the supervised tokens, and the share not 1, in the report and its summary."""
    prepared = PreparationPipeline.from_config(tokenizer).prepare(weighted_rows(8))
    spread = prepared.report.token_weights
    assert spread["min"] == 0.25 and spread["max"] == 3.0
    assert 0 < spread["share_not_1"] < 1
    assert "Per-message weights on the supervised tokens: min/mean/max 0.25/" in prepared.report.summary()
    assert prepared.report.to_dict()["token_weights"] == spread


def test_the_weight_spread_reaches_the_audit_page_tensorboard_and_json(tokenizer, tmp_path):
    """The page's numbers table, the `audit/token_weight_*` scalars and the JSON carry the spread; unweighted: none."""
    from trl_masked_sft.audit_html import render_audit_html
    from trl_masked_sft.metrics import audit_logs

    prepared = PreparationPipeline.from_config(tokenizer).prepare(weighted_rows(8))
    page = render_audit_html(prepared.report, prepared.supervised_counts, [])
    assert "per-message weight on the supervised tokens, min / mean / max" in page and "0.25 / " in page
    assert audit_logs(prepared.report)["audit/token_weight_max"] == 3.0
    path = prepared.report.write_json(tmp_path / "audit.json")
    assert json.loads(path.read_text())["token_weights"]["min"] == 0.25
    plain = PreparationPipeline.from_config(tokenizer).prepare(
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    )
    assert not any(key.startswith("audit/token_weight") for key in audit_logs(plain.report))
    assert "per-message weight" not in render_audit_html(plain.report, plain.supervised_counts, [])


def test_trl_packing_keeps_the_weights_with_their_labels(tokenizer, model, make_config):
    """`packing=True`: TRL would keep only `input_ids`/`labels`; the weights are packed with them, label for label."""
    rows = weighted_rows(16)
    packed = _trainer(tokenizer, model, make_config, rows, packing=True, per_device_train_batch_size=16)
    plain = _trainer(tokenizer, model, make_config, rows, pack_within_batch=False, per_device_train_batch_size=16)
    assert WEIGHTS in packed.train_dataset.column_names
    batches = [next(iter(t.get_train_dataloader())) for t in (packed, plain)]
    for batch in batches:
        assert torch.equal(batch[WEIGHTS] != 0, batch["labels"] != IGNORE_INDEX)
    packed_pairs, plain_pairs = (
        sorted(
            zip(b["labels"][b["labels"] != IGNORE_INDEX].tolist(), b[WEIGHTS][b[WEIGHTS] != 0].tolist(), strict=True)
        )
        for b in batches
    )
    assert packed_pairs == plain_pairs


def test_streamed_rows_carry_their_weights_to_the_loss(tokenizer, model, make_config):
    """A streamed (`IterableDataset`) conversation dataset: weighted rows reach the batch with their weights."""
    from datasets import Dataset

    stream = Dataset.from_list(weighted_rows(8)).to_iterable_dataset()
    trainer = _trainer(tokenizer, model, make_config, stream, max_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    assert WEIGHTS in batch
    assert torch.equal(batch[WEIGHTS] != 0, batch["labels"] != IGNORE_INDEX)
    assert sorted(set(batch[WEIGHTS][batch[WEIGHTS] != 0].tolist())) == [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]


def test_the_inspector_says_the_weights_of_the_trained_tokens(tokenizer):
    """The row header counts the trained tokens per weight; an unweighted row's header is today's."""
    from trl_masked_sft import inspect_rows

    rows = inspect_rows(weighted_rows(2), tokenizer, rows=2)
    assert rows[0].header.endswith("tokens trained (2 at weight 0.5)")
    plain = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    assert inspect_rows(plain, tokenizer, rows=1)[0].header.endswith("tokens trained")
