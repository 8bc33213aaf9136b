"""No run of zero steps: configurations that give no optimizer step or no eval batch are refused with their numbers."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset

from trl_masked_sft import ConfigError, MaskedSFTTrainer
from trl_masked_sft.run_checks import batches_per_process


def rows(n: int) -> list[dict]:
    return [{"prompt": f"How many meters are in {i} km?", "completion": f" {i * 1000}"} for i in range(1, n + 1)]


@pytest.mark.parametrize(
    ("rows_", "batch", "world", "drop_last", "split", "expected"),
    [
        (3, 4, 1, True, False, 0),
        (3, 4, 1, False, False, 1),
        (8, 4, 1, True, False, 2),
        (9, 4, 2, True, False, 1),
        (7, 4, 2, True, False, 0),  # one full batch for two processes: each gets none
        (7, 4, 2, False, False, 1),
        (7, 4, 2, True, True, 1),  # split_batches: the one batch is shared out
    ],
)
def test_batches_per_process_follows_accelerate_sharding(rows_, batch, world, drop_last, split, expected):
    """The count transformers' epoch length comes from, for one or more processes."""
    assert batches_per_process(rows_, batch, world, drop_last, split) == expected


def test_batch_larger_than_the_dataset_with_drop_last_and_max_steps_is_refused(tokenizer, model, make_config):
    """transformers would end the run at step 0 with no error; the refusal names every number that decides it."""
    config = make_config(per_device_train_batch_size=4, dataloader_drop_last=True, max_steps=2)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(3), processing_class=tokenizer)
    with pytest.raises(ConfigError) as info:
        trainer.train()
    message = str(info.value)
    for part in (
        "train dataset gives no optimizer step",
        "3 rows",
        "`per_device_train_batch_size=4`",
        "1 process (world size)",
        "`gradient_accumulation_steps=1`",
        "`dataloader_drop_last=True`",
        "`max_steps=2`",
        "step 0",
        "set `dataloader_drop_last=False`",
        "lower `per_device_train_batch_size` to 3",
    ):
        assert part in message
    assert trainer.state.global_step == 0


def test_batch_larger_than_the_dataset_with_epochs_is_refused_before_transformers(tokenizer, model, make_config):
    """transformers' own error ("args.max_steps must be set ...") names neither the batch size nor drop_last."""
    config = make_config(per_device_train_batch_size=8, dataloader_drop_last=True, max_steps=-1, num_train_epochs=2)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(5), processing_class=tokenizer)
    with pytest.raises(
        ConfigError, match=r"5 rows, `per_device_train_batch_size=8`.*`max_steps=-1` \(epochs decide\)"
    ):
        trainer.train()


def test_the_same_rows_without_drop_last_train(tokenizer, model, make_config):
    """The partial batch is used without drop_last: no refusal, steps are taken."""
    config = make_config(per_device_train_batch_size=4, dataloader_drop_last=False, max_steps=1)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(3), processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1


def test_eval_dataset_that_gives_no_batch_is_refused(tokenizer, model, make_config):
    """`evaluate` would report no `eval_loss` at all; the refusal names the eval batch size."""
    config = make_config(
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        dataloader_drop_last=True,
        eval_strategy="steps",
        eval_steps=1,
    )
    trainer = MaskedSFTTrainer(
        model, args=config, train_dataset=rows(4), eval_dataset=rows(3), processing_class=tokenizer
    )
    with pytest.raises(
        ConfigError, match=r"eval dataset gives no evaluation batch: 3 rows, `per_device_eval_batch_size=4`"
    ):
        trainer.train()


def test_rows_dropped_by_the_policy_below_one_batch_are_counted_and_said(tokenizer, model, make_config):
    """A batch that fit the rows given no longer fits once `masked_row_policy` dropped some: the refusal says so."""
    data = rows(9) + [{"prompt": "word " * 60, "completion": " 1"}]
    config = make_config(
        per_device_train_batch_size=10,
        dataloader_drop_last=True,
        max_length=40,
        masked_row_policy="drop",
        max_masked_row_fraction=0.2,
    )
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ConfigError, match=r"9 rows \(10 before `masked_row_policy='drop'` dropped 1\)"):
        trainer.train()


def test_packed_sequences_fewer_than_one_batch_are_refused(tokenizer, model, make_config):
    """Packing joins 6 short rows into one sequence: a batch of 2 with drop_last gives no step."""
    config = make_config(
        per_device_train_batch_size=2, dataloader_drop_last=True, packing=True, max_length=512, max_steps=2
    )
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(6), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 1
    with pytest.raises(ConfigError, match=r"1 row \(after `packing` joined the rows into sequences\)"):
        trainer.train()


def test_streamed_dataset_that_gives_no_row_is_refused(tokenizer, model, make_config):
    """Every streamed row dropped by the pre-flight policy: the stream is empty and training would take no step."""
    long = [{"prompt": "word " * 60, "completion": " 1"}] * 3
    config = make_config(max_length=40, masked_row_policy="drop", max_steps=2)
    stream = IterableDataset.from_generator(lambda: iter(long))
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=stream, processing_class=tokenizer)
    with pytest.raises(ConfigError, match="0 rows in the streamed train dataset"):
        trainer.train()


def test_streamed_dataset_smaller_than_one_batch_still_trains(tokenizer, model, make_config):
    """A stream keeps its last partial batch, so 3 rows with a batch of 4 and drop_last train."""
    config = make_config(per_device_train_batch_size=4, dataloader_drop_last=True, max_steps=1)
    stream = IterableDataset.from_generator(lambda: iter(rows(3)))
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=stream, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1


def test_dataset_of_exactly_one_batch_trains(tokenizer, model, make_config):
    """The boundary: rows == batch size with drop_last is one step."""
    config = make_config(per_device_train_batch_size=4, dataloader_drop_last=True, max_steps=1)
    trainer = MaskedSFTTrainer(
        model, args=config, train_dataset=Dataset.from_list(rows(4)), processing_class=tokenizer
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_the_streamed_probe_reads_the_raw_stream_so_each_row_is_counted_once(tokenizer, model, make_config):
    """Rows 0 and 9 of 10 dropped is 2 of 10, within `max_masked_row_fraction=0.2`: the run-length probe must not
    mask and count row 0 a second time (3 of 12 would fail), nor warn about it before training reads it."""
    data = rows(10)
    for bad in (0, 9):
        data[bad] = {"prompt": "word " * 60, "completion": " 1"}
    config = make_config(
        max_length=40,
        masked_row_policy="drop",
        max_masked_row_fraction=0.2,
        per_device_train_batch_size=8,
        max_steps=1,
    )
    stream = IterableDataset.from_generator(lambda: iter(data))
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=stream, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
