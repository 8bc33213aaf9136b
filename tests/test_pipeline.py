"""`PreparationPipeline`: rows to `(input_ids, labels)`, the audit and the policy, with a tokenizer and no model."""

from __future__ import annotations

import dataclasses

import pytest
from datasets import Dataset, IterableDataset

from trl_masked_sft import (
    IGNORE_INDEX,
    DataCollatorForCompletionOnlyLM,
    Layout,
    MaskedSFTTrainer,
    MaskingOptions,
    PreparationPipeline,
    UnsupervisedRowsError,
)

ROWS = {
    "prompt": ["How many grams are there in 3 kg?", "Convert 5 hour to minutes."],
    "completion": [" <answer>3000.0</answer>", " <answer>300.0</answer>"],
}


def _supervised(ids, labels):
    return [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]


def test_a_prompt_completion_row_trains_its_completion_and_eos_only(tokenizer):
    """The prompt is masked; the completion's tokens and the eos appended to it are trained."""
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare(Dataset.from_dict(ROWS))
    row = prepared.dataset[0]
    assert prepared.layout is Layout.PROMPT_COMPLETION
    assert (
        tokenizer.decode(_supervised(row["input_ids"], row["labels"])) == ROWS["completion"][0] + tokenizer.eos_token
    )
    assert prepared.report.rows == 2 and prepared.report.rows_fully_masked == 0
    assert prepared.supervised_counts == [
        sum(lab != IGNORE_INDEX for lab in r["labels"][1:]) for r in prepared.dataset
    ]


def test_a_messages_row_trains_the_assistant_turn_only(tokenizer):
    """User turns and the template's headers are masked; the reply and its end-of-turn token are trained."""
    messages = [{"role": "user", "content": "2 kg in grams?"}, {"role": "assistant", "content": "2000 grams"}]
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare([{"messages": messages}])
    row = prepared.dataset[0]
    assert prepared.layout is Layout.CONVERSATION
    assert tokenizer.decode(_supervised(row["input_ids"], row["labels"])).startswith("2000 grams")
    assert "2 kg in grams" not in tokenizer.decode(_supervised(row["input_ids"], row["labels"]))


def test_a_pretokenized_row_is_trimmed_and_its_completion_mask_merged(tokenizer):
    """Padding given in advance is removed; `completion_mask` masks the prompt even next to `labels`."""
    rows = {
        "input_ids": [[5, 6, 7, 8, 0, 0]],
        "labels": [[5, 6, 7, 8, 0, 0]],
        "completion_mask": [[0, 0, 1, 1, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 0, 0]],
    }
    row = PreparationPipeline(tokenizer, MaskingOptions()).prepare(Dataset.from_dict(rows)).dataset[0]
    assert row["input_ids"] == [5, 6, 7, 8]
    assert row["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]


def test_the_policy_raises_when_enforced_and_is_reported_when_not(tokenizer):
    """A row truncated before its answer stops `prepare`; an audit keeps the row and says what would happen."""
    options = MaskingOptions(max_length=4)
    rows = Dataset.from_dict({"prompt": ["a very long prompt that fills every position"], "completion": [" x"]})
    with pytest.raises(UnsupervisedRowsError, match="truncated at max_length 4"):
        PreparationPipeline(tokenizer, options).prepare(rows)
    audited = PreparationPipeline(tokenizer, options).prepare(rows, enforce=False)
    assert len(audited.dataset) == 1
    assert "masked_row_policy='error'" in audited.report.policy_error


def test_the_drop_policy_drops_the_rows_it_names(tokenizer):
    """`masked_row_policy='drop'` removes the unsupervised row and counts it in the report."""
    options = MaskingOptions(max_length=6, masked_row_policy="drop", max_masked_row_fraction=0.5)
    rows = Dataset.from_dict(
        {"prompt": ["hi", "a very long prompt that fills every position"], "completion": [" x"] * 2}
    )
    prepared = PreparationPipeline(tokenizer, options).prepare(rows)
    assert len(prepared.dataset) == 1 and prepared.report.rows_dropped == 1
    assert list(prepared.verdict.unsupervised) == [1]


def test_a_collator_template_masks_text_rows(tokenizer):
    """The collator's template matcher is the pipeline's: only what follows the response template is trained."""
    collator = DataCollatorForCompletionOnlyLM("Answer:", tokenizer=tokenizer)
    pipeline = PreparationPipeline.from_config(tokenizer, None, data_collator=collator)
    row = pipeline.prepare(Dataset.from_dict({"text": ["Question: 2 kg in g? Answer: 2000"]})).dataset[0]
    assert tokenizer.decode(_supervised(row["input_ids"], row["labels"])).strip() == "2000" + tokenizer.eos_token


def test_a_streamed_row_without_an_answer_names_its_index(tokenizer):
    """Streaming rows are checked as they are read; the error names the row, not "row -1"."""
    rows = [{"prompt": "hi", "completion": " there"}, {"prompt": "and", "completion": "  "}]
    stream = IterableDataset.from_generator(lambda: iter(rows))
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare(stream)
    assert prepared.report is None
    with pytest.raises(UnsupervisedRowsError, match="Row 1 of the streamed train dataset.*empty completion"):
        list(prepared.dataset)


def test_the_options_are_frozen_and_the_config_is_never_changed(tokenizer, make_config, model):
    """Options are read once; preparing, auditing and training leave the user's config as it was."""
    config = make_config(max_length=64, completion_only_loss=None, assistant_only_loss=False)
    before = dataclasses.asdict(config)
    options = MaskingOptions.from_args(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_length = 3
    PreparationPipeline(tokenizer, options).prepare(Dataset.from_dict(ROWS), enforce=False)
    MaskedSFTTrainer(model, args=config, train_dataset=Dataset.from_dict(ROWS), processing_class=tokenizer)
    assert dataclasses.asdict(config) == before


def test_the_trainer_prepares_exactly_what_the_pipeline_prepares(tokenizer, make_config, model):
    """One code path: the trainer's train dataset equals the pipeline's output for the same config."""
    config = make_config(shuffle_dataset=False)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=Dataset.from_dict(ROWS), processing_class=tokenizer)
    prepared = PreparationPipeline.from_config(tokenizer, config).prepare(Dataset.from_dict(ROWS))
    assert trainer.train_dataset["input_ids"] == prepared.dataset["input_ids"]
    assert trainer.train_dataset["labels"] == prepared.dataset["labels"]
    assert trainer.audit_reports["train"] == prepared.report


def test_the_audit_honours_dataset_num_proc(tokenizer, make_config, capfd):
    """`dataset_num_proc=2`: the supervised-token audit maps in 2 worker processes, to the same rows as with one."""
    rows = Dataset.from_dict({key: values * 8 for key, values in ROWS.items()})
    alone = PreparationPipeline.from_config(tokenizer, make_config()).prepare(rows)
    capfd.readouterr()
    parallel = PreparationPipeline.from_config(tokenizer, make_config(dataset_num_proc=2)).prepare(rows)
    assert "Checking supervised tokens of train dataset (num_proc=2)" in capfd.readouterr().err
    assert parallel.dataset.to_dict() == alone.dataset.to_dict()
    assert parallel.report.to_dict() == alone.report.to_dict()
