"""In-batch packing: rows laid end to end, every fast path compared with the padded batch it replaces."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from datasets import Dataset

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTTrainer
from trl_masked_sft.packing import PACKED_TOKENS_KEY, PackingCollator, pack_rows, packing_is_exact
from trl_masked_sft.tiny import build_tiny_model

PAD, IGNORE = -8, -9  # odd ids, so that no test passes on defaults


def _rows(seed: int, n: int, longest: int = 40) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    ids = [[rng.randrange(5, 300) for _ in range(rng.randint(1, longest))] for _ in range(n)]
    labels = [[t if rng.random() < 0.6 else -100 for t in row] for row in ids]
    return ids, labels


def _padded(ids, labels, pad_id: int) -> dict[str, torch.Tensor]:
    """The reference: a right-padded batch with an attention mask (what TRL's collator builds)."""
    width = max(map(len, ids))
    batch = {
        "input_ids": torch.full((len(ids), width), pad_id),
        "labels": torch.full((len(ids), width), -100),
        "attention_mask": torch.zeros((len(ids), width), dtype=torch.long),
    }
    for i, (row, row_labels) in enumerate(zip(ids, labels, strict=True)):
        batch["input_ids"][i, : len(row)] = torch.tensor(row)
        batch["labels"][i, : len(row)] = torch.tensor(row_labels)
        batch["attention_mask"][i, : len(row)] = 1
    return batch


def _segments(packed) -> list[tuple[list[int], list[int]]]:
    """Cut packed rows back into (ids, labels) segments where the positions restart (padding segments dropped)."""
    out = []
    for ids, labels, positions in zip(packed["input_ids"], packed["labels"], packed["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:], strict=False):
            if ids[a] != PAD or labels[a] != IGNORE or a == 0:
                out.append((ids[a:b].tolist(), labels[a:b].tolist()))
    return out


def test_packed_rows_hold_every_row_once_contiguous_with_restarting_positions():
    """Each row appears whole, once, its positions 0..len-1; the tail of a packed row is padding."""
    ids = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11]]
    packed = pack_rows(ids, ids, pad_token_id=PAD, ignore_index=IGNORE, min_width=6)
    assert packed["input_ids"].tolist() == [[4, 5, 6, 7, 8, 9], [1, 2, 3, 10, 11, PAD]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert packed[PACKED_TOKENS_KEY] == 11


def test_first_label_of_every_packed_row_is_ignored():
    """A row's first token is never a target (unpacked it is position 0): packed, its label is `ignore_index`."""
    ids = [[1, 2, 3], [4, 5], [6, 7, 8]]
    packed = pack_rows(ids, ids, pad_token_id=PAD, ignore_index=IGNORE, min_width=16)
    assert packed["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5, IGNORE, 7, 8]]


@pytest.mark.parametrize("seed", range(6))
def test_packing_keeps_every_token_and_label_and_never_widens_the_batch(seed):
    """Random batches: same (ids, labels) per row, same supervised count, width <= max(longest row, min_width)."""
    ids, labels = _rows(seed, n=random.Random(seed).randint(1, 33))
    min_width = [1, 16, 64, 128][seed % 4]
    packed = pack_rows(ids, labels, pad_token_id=PAD, ignore_index=IGNORE, min_width=min_width)
    expected = sorted(
        (row, [IGNORE if i == 0 or lab == -100 else lab for i, lab in enumerate(lab_row)])
        for row, lab_row in zip(ids, labels, strict=True)
    )
    got = sorted((row, [IGNORE if lab == -100 else lab for lab in lab_row]) for row, lab_row in _segments(packed))
    assert got == expected
    assert packed["input_ids"].shape[1] <= max(max(map(len, ids)), min_width)
    assert packed["input_ids"].numel() <= len(ids) * max(map(len, ids))


def test_single_row_packing_for_flash_attention_is_one_row():
    """`single_row` lays the whole batch in one row (flash-attention kernels read packed rows only at batch 1)."""
    ids, labels = _rows(0, n=8)
    packed = pack_rows(ids, labels, pad_token_id=PAD, single_row=True)
    assert packed["input_ids"].shape == (1, sum(map(len, ids)))


def test_pack_rows_rejects_an_empty_row():
    """An empty row has nothing to pack: the error says so."""
    with pytest.raises(ValueError, match="empty row"):
        pack_rows([[1, 2], []], [[1, 2], []], pad_token_id=PAD)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("seed", range(3))
def test_packed_loss_equals_the_padded_batch_loss(tokenizer, attention, seed):
    """The model's loss on a packed batch equals its loss on the padded batch (float32 rounding), same token count."""
    model = build_tiny_model(tokenizer)
    model.config._attn_implementation = attention
    ids, labels = _rows(seed, n=12)
    packed = pack_rows(ids, labels, pad_token_id=tokenizer.pad_token_id)
    packed.pop(PACKED_TOKENS_KEY)
    padded = _padded(ids, labels, tokenizer.pad_token_id)
    with torch.no_grad():
        loss_packed = model(**packed, use_cache=False).loss
        loss_padded = model(**padded, use_cache=False).loss
    assert (packed["labels"][:, 1:] != -100).sum() == (padded["labels"][:, 1:] != -100).sum()
    assert loss_packed.item() == pytest.approx(loss_padded.item(), rel=1e-5)


def test_probe_accepts_models_that_honour_packed_position_ids(tokenizer):
    """sdpa and eager attention mask packed rows from each other: the probe says packing is exact."""
    model = build_tiny_model(tokenizer)
    assert packing_is_exact(model, pad_token_id=tokenizer.pad_token_id)
    model.config._attn_implementation = "eager"
    assert packing_is_exact(model, pad_token_id=tokenizer.pad_token_id)
    assert model.training  # the probe restores the mode it found


class _IgnoresPositions(torch.nn.Module):
    """A model whose forward drops `position_ids`, so packed rows attend to each other."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.model(input_ids=input_ids, **kwargs)


def test_probe_rejects_a_model_that_ignores_position_ids(tokenizer):
    """Without restarting positions and block masks, packed rows see each other: the probe refuses packing."""
    assert not packing_is_exact(_IgnoresPositions(build_tiny_model(tokenizer)), pad_token_id=tokenizer.pad_token_id)


class _PrependsAToken(_IgnoresPositions):
    """A model that puts one token of its own before each row (as prompt tuning does), so its logits are longer."""

    def forward(self, input_ids, position_ids=None, **kwargs):
        extra = torch.zeros_like(input_ids[:, :1])
        if position_ids is not None:
            position_ids = torch.cat([torch.zeros_like(position_ids[:, :1]), position_ids + 1], dim=1)
        return self.model(input_ids=torch.cat([extra, input_ids], dim=1), position_ids=position_ids, **kwargs)


def test_probe_declines_a_model_whose_logits_are_longer_than_its_input(tokenizer):
    """Logits longer than `input_ids` (virtual tokens the probe does not know of) mean no packing, not a crash."""
    model = _PrependsAToken(build_tiny_model(tokenizer))

    assert packing_is_exact(model, pad_token_id=tokenizer.pad_token_id) is False


def test_collator_hands_rows_without_labels_to_its_fallback():
    """Rows TRL prepared without labels (or pre-packed with `seq_lengths`) keep the usual collator."""
    collator = PackingCollator(pad_token_id=PAD, fallback=lambda rows: {"fallback": len(rows)})
    assert collator([{"input_ids": [1, 2]}]) == {"fallback": 1}
    assert collator([{"input_ids": [1, 2], "labels": [1, 2], "seq_lengths": [2]}]) == {"fallback": 1}


# ------------------------------------------------------------------------------------------------ in the trainer


def _data(n: int = 24) -> Dataset:
    prompts = [f"How many meters are there in {i} km? Think of {'a long ' * (i % 7)}answer." for i in range(1, n + 1)]
    return Dataset.from_dict(
        {"prompt": prompts, "completion": [f" <answer>{i * 1000}</answer>" for i in range(1, n + 1)]}
    )


@pytest.fixture
def capture_log(capture_logs):
    """What the `trl_masked_sft.trainer` logger says."""
    return capture_logs("trl_masked_sft.trainer", logging.INFO)


def test_trainer_packs_training_batches_but_not_eval_batches(tokenizer, model, make_config):
    """Training batches are packed (position ids, no attention mask, no padding between rows); eval batches not."""
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(per_device_train_batch_size=8),
        train_dataset=_data(),
        eval_dataset=_data(8),
        processing_class=tokenizer,
    )
    batches = list(trainer.get_train_dataloader())
    assert all("position_ids" in b and "attention_mask" not in b and b["input_ids"].shape[0] < 8 for b in batches)
    assert sum(b[PACKED_TOKENS_KEY] for b in batches) == sum(map(len, trainer.train_dataset["input_ids"]))
    assert "attention_mask" in next(iter(trainer.get_eval_dataloader()))


def test_packed_training_gives_the_unpacked_losses_and_token_counts(tokenizer, make_config):
    """Same rows, same order: the loss curve and TRL's `num_tokens` metric match training without packing."""
    runs = []
    for pack in (True, False):
        trainer = MaskedSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_config(pack_within_batch=pack, per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3),
            train_dataset=_data(),
            processing_class=tokenizer,
        )
        trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        runs.append(([e["loss"] for e in history], [e["num_tokens"] for e in history]))
    (packed_loss, packed_tokens), (padded_loss, padded_tokens) = runs
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert packed_tokens == padded_tokens


def test_custom_collator_turns_packing_off_and_says_why(tokenizer, model, make_config, capture_log):
    """A user's `data_collator` decides the layout: batches stay padded, the log says why."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tokenizer)
    trainer = MaskedSFTTrainer(
        model, args=make_config(), train_dataset=_data(), processing_class=tokenizer, data_collator=collator
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" in batch and "position_ids" not in batch
    assert any("custom `data_collator`" in r for r in capture_log)


def test_model_that_ignores_position_ids_trains_unpacked(tokenizer, make_config, capture_log):
    """When the probe fails, training batches are padded as usual and the log says why."""
    trainer = MaskedSFTTrainer(
        build_tiny_model(tokenizer), args=make_config(), train_dataset=_data(), processing_class=tokenizer
    )
    trainer.model = _IgnoresPositions(trainer.model)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" in batch
    assert any("different logits" in r for r in capture_log)
