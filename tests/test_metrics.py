"""Mask metrics: per-batch counts, the accumulator's scalars, the audit as logs, and the scalars in TensorBoard."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR
from trl_masked_sft.metrics import BatchMaskStats, MaskMetrics, audit_logs, batch_mask_stats
from trl_masked_sft.packing import pack_rows
from trl_masked_sft.report import AuditReport

IGNORE, PAD = -9, 0  # odd ids, so a test can't pass on defaults


def padded_batch() -> dict:
    """Two rows padded to 4: 5 real tokens; after the shift, one supervised target per row."""
    return {
        "input_ids": torch.tensor([[5, 6, 7, PAD], [5, 6, PAD, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": torch.tensor([[IGNORE, IGNORE, 7, IGNORE], [IGNORE, 6, IGNORE, IGNORE]]),
    }


def test_a_padded_batch_counts_positions_real_tokens_and_supervised_targets():
    """8 positions, 5 of them real (attention mask), 2 supervised labels with the given ignore index."""
    assert batch_mask_stats(padded_batch(), ignore_index=IGNORE) == BatchMaskStats(8, 5, 2)


def test_the_first_label_of_a_row_is_never_counted():
    """After the causal shift position 0 is not a target: a label there is not a supervised token."""
    batch = padded_batch()
    batch["labels"][0, 0] = 5
    assert batch_mask_stats(batch, ignore_index=IGNORE).supervised_tokens == 2


def test_shift_labels_from_the_collator_are_counted_as_they_are():
    """A collator's `shift_labels` are already shifted: every non-ignored entry counts."""
    batch = padded_batch() | {"shift_labels": torch.tensor([[IGNORE, 7, 7, IGNORE], [6, IGNORE, IGNORE, IGNORE]])}
    assert batch_mask_stats(batch, ignore_index=IGNORE).supervised_tokens == 3


def test_a_packed_batch_counts_the_same_supervised_and_real_tokens_as_padded():
    """In-batch packing changes the layout (less padding), not the real or the supervised tokens."""
    rows = [[5, 6, 7], [5, 6], [8, 9, 10, 11]]
    labels = [[IGNORE, IGNORE, 7], [IGNORE, 6], [IGNORE, IGNORE, 10, 11]]
    packed = pack_rows(rows, labels, pad_token_id=PAD, ignore_index=IGNORE, min_width=8)
    width = max(map(len, rows))
    padded = {
        "input_ids": torch.tensor([r + [PAD] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([r + [IGNORE] * (width - len(r)) for r in labels]),
    }
    packed_stats = batch_mask_stats(packed, ignore_index=IGNORE)
    padded_stats = batch_mask_stats(padded, ignore_index=IGNORE)
    assert (packed_stats.real_tokens, packed_stats.supervised_tokens) == (9, 4)
    assert (padded_stats.real_tokens, padded_stats.supervised_tokens) == (9, 4)
    assert packed_stats.positions == packed["input_ids"].numel() and padded_stats.positions == 12


def test_a_batch_without_attention_mask_has_no_padding():
    """A padding-free batch (one row, `position_ids`, no mask) counts every position as real."""
    batch = {"input_ids": torch.tensor([[5, 6, 7, 5, 6]]), "labels": torch.tensor([[IGNORE, 6, 7, IGNORE, 6]])}
    assert batch_mask_stats(batch, ignore_index=IGNORE) == BatchMaskStats(5, 5, 3)


def test_an_explicit_real_token_count_wins():
    """`real_tokens` given by the caller (the packing collator's count) replaces the attention mask's."""
    assert batch_mask_stats(padded_batch(), ignore_index=IGNORE, real_tokens=7).real_tokens == 7


def test_a_batch_without_labels_is_refused_naming_its_keys():
    """Without `labels` there is nothing to count: the error names the keys it got."""
    with pytest.raises(ValueError, match=r"`input_ids` and `labels`, got keys \['input_ids'\]"):
        batch_mask_stats({"input_ids": torch.tensor([[1, 2]])})


def test_impossible_counts_are_refused():
    """More supervised or real tokens than positions is a caller's bug, said with the values."""
    with pytest.raises(ValueError, match="supervised_tokens=9"):
        BatchMaskStats(positions=4, real_tokens=4, supervised_tokens=9)


def test_scalars_are_per_optimizer_step_and_token_weighted():
    """Two micro-batches of one step: supervised tokens add up; shares weigh every token, not every batch."""
    metrics = MaskMetrics()
    metrics.add(BatchMaskStats(positions=8, real_tokens=5, supervised_tokens=2))
    metrics.add(BatchMaskStats(positions=2, real_tokens=2, supervised_tokens=1))
    scalars = metrics.pop("train", global_step=1)
    assert scalars == pytest.approx({"supervised_tokens": 3.0, "masked_share": 1 - 3 / 7, "padding_share": 3 / 10})


def test_steps_are_counted_since_the_previous_log():
    """Logged at steps 2 and 5: the second window averages over its 3 steps."""
    metrics = MaskMetrics()
    metrics.add(BatchMaskStats(4, 4, 4))
    metrics.pop("train", global_step=2)
    for _ in range(3):
        metrics.add(BatchMaskStats(4, 4, 2))
    assert metrics.pop("train", global_step=5)["supervised_tokens"] == 2.0


def test_eval_scalars_carry_the_eval_prefix_and_rows_dropped():
    """Eval names start with `eval_` (TensorBoard: `eval/...`); each split reports its own dropped rows."""
    metrics = MaskMetrics()
    metrics.rows_dropped = {"train": 3, "eval": 1}
    metrics.add(BatchMaskStats(4, 4, 1), "eval")
    metrics.add(BatchMaskStats(4, 2, 1), "eval")
    assert metrics.pop("eval") == pytest.approx(
        {"eval_supervised_tokens": 1.0, "eval_masked_share": 2 / 3, "eval_padding_share": 0.25, "eval_rows_dropped": 1}
    )


def test_nothing_counted_gives_nothing_to_log_and_pop_resets():
    """No batch since the last log: no scalar (not a misleading zero); a second pop is empty too."""
    metrics = MaskMetrics()
    assert metrics.pop("train", global_step=3) == {}
    metrics.add(BatchMaskStats(4, 4, 1))
    assert metrics.pop("train") and metrics.pop("train") == {}


def test_an_unknown_mode_is_refused():
    """Only `train` and `eval` are modes."""
    with pytest.raises(ValueError, match="'test'"):
        MaskMetrics().add(BatchMaskStats(1, 1, 0), "test")


def test_the_audit_becomes_scalars_only():
    """Every number of the report is an `audit/...` scalar; the summary is no log-dict entry (a console logger
    would print it as `[String too long to display...]`)."""
    report = AuditReport("train", 10, 64, 1, 2, 0, 3, 4.5, 9, 0.4, rows_dropped=1)
    logs = audit_logs(report)
    assert logs["audit/rows"] == 10.0 and logs["audit/supervised_tokens_median"] == 4.5
    assert logs["audit/rows_dropped"] == 1.0 and logs["audit/supervised_token_share"] == 0.4
    assert "audit/summary" not in logs and all(isinstance(v, float) for v in logs.values())


def test_the_trainer_hook_puts_the_mask_scalars_in_tensorboard(tokenizer, model, make_config, tmp_path, monkeypatch):
    """With `MaskedSFTTrainer`, a run's TensorBoard events hold the mask scalars
    for train and eval, their values match the batch, and the audit is there as scalars and text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trl_masked_sft import MaskedSFTTrainer

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    rows = {"prompt": [f"What is {i} kg in g?" for i in range(4)], "completion": [f" {i}000 g" for i in range(4)]}
    data = Dataset.from_dict(rows)
    folder = {"logging_dir": str(tmp_path / "tb")} if TRANSFORMERS_MAJOR < 5 else {}  # 4.x reads no variable
    args = make_config(report_to="tensorboard", max_steps=1, eval_strategy="steps", eval_steps=1, **folder)
    trainer = MaskedSFTTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    expected = sum(sum(label != -100 for label in row[1:]) for row in trainer.train_dataset["labels"])

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for mode in ("train", "eval"):
        for name in ("supervised_tokens", "masked_share", "padding_share", "rows_dropped"):
            assert f"{mode}/{name}" in scalars, (mode, name, scalars)
    assert events.Scalars("train/supervised_tokens")[0].value == expected
    assert 0 < events.Scalars("train/masked_share")[0].value < 1
    assert events.Scalars("train/audit/rows")[0].value == 4
    assert [tag for tag in events.Tags()["tensors"] if "audit" in tag] == ["train/audit/summary/text_summary"]
    logged = [entry for entry in trainer.state.log_history if any(key.startswith("audit/") for key in entry)]
    assert len(logged) == 1 and all(not isinstance(value, str) for value in logged[0].values())
