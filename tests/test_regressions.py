"""Bugs found in review, each pinned by the test written before its fix."""

from __future__ import annotations

import warnings

import pytest
from datasets import Dataset, IterableDataset
from transformers import DataCollatorForSeq2Seq, TrainingArguments

from trl_masked_sft import (
    DataCollatorForCompletionOnlyLM,
    MaskedSFTConfig,
    MaskedSFTTrainer,
    MaskedSFTWarning,
    UnsupervisedRowsError,
    audit_dataset,
)
from trl_masked_sft.masking import truncate_row
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

IGNORE = -100


def kept(tokenizer, row) -> str:
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])


def test_config_response_template_applies_when_the_model_is_a_path(tokenizer, make_config, tmp_path):
    """With `model` given as a path and no processing_class, the config's response_template still masks."""
    path = tmp_path / "model"
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    texts = [f"### Question: {i} + {i}?\n### Answer: {2 * i}" for i in range(8)]
    trainer = MaskedSFTTrainer(
        str(path), args=make_config(response_template="### Answer:"), train_dataset=Dataset.from_dict({"text": texts})
    )
    assert kept(trainer.processing_class, trainer.train_dataset[2]) == " 4<|eos|>"


def test_bfd_packing_audits_rows_that_the_packer_would_truncate(tokenizer, model, make_config):
    """With packing (bfd truncates long rows), a row whose answer would be cut away is reported."""
    rows = [[f"What is {i} km in m?", f" <answer>{i}</answer>"] for i in range(12)]
    rows += [["word " * 40, " <answer>1</answer>"]] * 2
    with pytest.raises(UnsupervisedRowsError, match="truncated at max_length 32"):
        MaskedSFTTrainer(
            model, args=make_config(max_length=32, packing=True), train_dataset=rows, processing_class=tokenizer
        )


def test_prompt_length_counts_real_tokens_of_left_padded_rows(tokenizer, model, make_config):
    """`prompt_length` masks the first real tokens, also when the row is padded on the left (as the collator does)."""
    prompt = tokenizer("What is 2 kg in gram?")["input_ids"]
    answer = tokenizer(" <answer>2000</answer>")["input_ids"] + [tokenizer.eos_token_id]
    pad = [tokenizer.pad_token_id] * 5
    data = Dataset.from_dict(
        {
            "input_ids": [pad + prompt + answer] * 4,
            "attention_mask": [[0] * 5 + [1] * (len(prompt) + len(answer))] * 4,
            "prompt_length": [len(prompt)] * 4,
        }
    )
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert kept(tokenizer, trainer.train_dataset[0]) == " <answer>2000</answer><|eos|>"
    collator = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer)
    batch = collator([dict(data[0])])
    assert tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE]) == " <answer>2000</answer><|eos|>"


def _stream(rows):
    return IterableDataset.from_generator(lambda: ({"prompt": p, "completion": c} for p, c in rows))


@pytest.mark.parametrize("policy", ["drop", "warn"])
def test_streaming_rows_dropped_past_the_allowed_share_fail(tokenizer, model, make_config, policy):
    """A stream whose rows are all unsupervised fails under drop/warn instead of training 0 steps."""
    rows = [("word " * 30, " <answer>1</answer>")] * 16
    config = make_config(max_length=16, masked_row_policy=policy, max_steps=2)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=_stream(rows), processing_class=tokenizer)
    with pytest.raises(UnsupervisedRowsError, match="max_masked_row_fraction"):
        trainer.train()


def test_streaming_warn_policy_warns_when_it_drops_a_row(tokenizer, model, make_config):
    """Under `warn`, the first dropped streaming row is named in a warning."""
    rows = [(f"What is {i} km in m?", f" <answer>{i}</answer>") for i in range(40)]
    rows[3] = ("word " * 30, " <answer>1</answer>")
    config = make_config(max_length=16, masked_row_policy="warn", max_steps=2)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=_stream(rows), processing_class=tokenizer)
    with pytest.warns(MaskedSFTWarning, match=r"row 3 .*truncated at max_length 16"):
        trainer.train()


def test_streaming_empty_completion_is_reported(tokenizer, model, make_config):
    """An empty completion in a stream is not trained as a lone eos: the policy applies."""
    rows = [(f"What is {i} km in m?", f" <answer>{i}</answer>") for i in range(8)]
    rows[2] = ("What is 2 km in m?", "")
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=_stream(rows), processing_class=tokenizer)
    with pytest.raises(UnsupervisedRowsError, match="empty completion"):
        trainer.train()


def test_min_completion_tokens_keeps_a_completion_that_fits_whole():
    """When the prompt is cut from the left, the whole completion (with its eos) stays if it fits."""
    ids = list(range(44))
    labels = [IGNORE] * 36 + ids[36:]
    out_ids, out_labels = truncate_row(ids, labels, 24, min_completion=2)
    assert out_ids == ids[20:] and out_labels[-8:] == ids[36:]


def test_plain_training_arguments_keep_sftconfig_defaults(tokenizer, model, tmp_path):
    """A transformers TrainingArguments becomes a config with SFTConfig's defaults (max_length 1024), as in TRL."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    rows = [["word " * 150 + "?", " <answer>1</answer>"]] * 4
    trainer = MaskedSFTTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer)
    assert trainer.args.max_length == 1024
    assert kept(tokenizer, trainer.train_dataset[0]) == " <answer>1</answer><|eos|>"


def test_audit_dataset_with_a_plain_sftconfig_means_completion_only(tokenizer, tmp_path):
    """`audit_dataset` treats `completion_only_loss=None` as on, as the trainer does."""
    from trl import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path), bf16=False, max_length=20, report_to="none")
    rows = [["word " * 30, " <answer>1</answer>"]] * 4
    report = audit_dataset(rows, tokenizer, config)
    assert report.rows_fully_masked == 4 and report.policy_error


def test_conversational_prompt_completion_follows_the_chat_options(tokenizer, model, make_config):
    """Prompt/completion given as messages train like `messages` rows: eot trained, template newline not."""
    data = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "What is 2 kg in gram?"}]] * 4,
            "completion": [[{"role": "assistant", "content": "<answer>2000</answer>"}]] * 4,
        }
    )
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert kept(tokenizer, trainer.train_dataset[0]) == "<answer>2000</answer><|im_end|>"
    assert trainer.audit_reports["train"].rows_stop_token_not_supervised == 0
    no_eot = MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_config(train_on_eot=False),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert kept(tokenizer, no_eot.train_dataset[0]) == "<answer>2000</answer>"


def test_gradient_checkpointing_false_is_honoured(tmp_path):
    """The deprecated `gradient_checkpointing=False` still turns activation checkpointing off."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = MaskedSFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False)
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False


def test_stop_token_is_recognised_when_bos_equals_eos(model, make_config):
    """Tokenizers with bos == eos (GPT-2 style) still count the trained eos as the stop token."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.bos_token = tokenizer.eos_token
    rows = [[f"What is {i} km in m?", f" <answer>{i}</answer>"] for i in range(8)]
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=rows, processing_class=tokenizer)
    assert trainer.audit_reports["train"].rows_stop_token_not_supervised == 0


def test_left_padding_collator_that_keeps_labels_is_not_flagged(tokenizer, model, make_config):
    """A correct collator that pads on the left gets no false warning."""
    tokenizer.padding_side = "left"
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    rows = [[f"What is {i} km in m?", f" <answer>{i * 1000}</answer>"] for i in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        MaskedSFTTrainer(
            model, args=make_config(), train_dataset=rows, processing_class=tokenizer, data_collator=collator
        )


def test_completion_collator_with_a_custom_ignore_index_is_refused_by_the_trainer(tokenizer, model, make_config):
    """The loss ignores only -100, so a collator writing another ignore value would train on it: refused clearly."""
    collator = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer, ignore_index=-8)
    with pytest.raises(ValueError, match=r"ignore_index=-8.*-100"):
        MaskedSFTTrainer(
            model,
            args=make_config(),
            train_dataset=[["a?", " b"]] * 4,
            processing_class=tokenizer,
            data_collator=collator,
        )


def test_homework_pairs_with_numeric_answers_get_the_homework_separator(tokenizer, model, make_config):
    """`[question, number]` rows train as the homework's `f"{question} <answer>{answer}</answer>"`, after a space."""
    rows = [["Can you change 2 hour to its equivalent in min?", 120.0]] * 4
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=rows, processing_class=tokenizer)
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith("min? <answer>120.0</answer><|eos|>")
    assert kept(tokenizer, trainer.train_dataset[0]).strip() == "<answer>120.0</answer><|eos|>"
