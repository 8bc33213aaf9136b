"""MaskedSFTTrainer end to end on a tiny real model: formats, masks, checks, errors, label_names, loss."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling
from trl import SFTConfig

from trl_masked_sft import (
    AllMaskedBatchError,
    DataCollatorForCompletionOnlyLM,
    DatasetFormatError,
    DatasetTypeError,
    LabelsOverwrittenError,
    MaskedSFTTrainer,
    MaskedSFTWarning,
    UnsupervisedRowsError,
    homework_lora_config,
)
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

IGNORE = -100


def qa_rows(n: int = 16) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


def prompt_completion(n: int = 16) -> Dataset:
    rows = qa_rows(n)
    return Dataset.from_dict({"prompt": [q for q, _ in rows], "completion": [a for _, a in rows]})


def supervised_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])


@pytest.fixture
def capture_log(capture_logs):
    """What the package's loggers say (the trainer, the pipeline, ...)."""
    return capture_logs("trl_masked_sft")


# ---------------------------------------------------------------------------------------------- data formats


def test_prompt_completion_rows_train_on_the_completion_and_eos_only(tokenizer, model, make_config):
    """Prompt tokens are masked; the completion and its eos token are supervised."""
    trainer = MaskedSFTTrainer(
        model, args=make_config(), train_dataset=prompt_completion(), processing_class=tokenizer
    )
    row = trainer.train_dataset[0]
    assert supervised_text(tokenizer, row) == " <answer>1000</answer><|eos|>"
    assert row["labels"][-1] == tokenizer.eos_token_id


def test_question_answer_columns_are_used_through_the_column_fields(tokenizer, model, make_config):
    """`prompt_column`/`completion_column` let question/answer datasets train on the answers."""
    rows = qa_rows()
    data = Dataset.from_dict({"question": [q for q, _ in rows], "answer": [a for _, a in rows]})
    config = make_config(prompt_column="question", completion_column="answer")
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    assert supervised_text(tokenizer, trainer.train_dataset[1]) == " <answer>2000</answer><|eos|>"


def test_homework_pairs_with_float_answers_train_on_the_answer(tokenizer, model, make_config):
    """Homework rows given as `[question, answer]` lists (float answers) train on the homework's answer format."""
    rows = [["Can you change 2 hour to its equivalent in min?", 120.0], ["What is 4 kg in gram?", 4000.0]] * 4
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=rows, processing_class=tokenizer)
    assert supervised_text(tokenizer, trainer.train_dataset[0]) == " <answer>120.0</answer><|eos|>"
    trainer.train()


def test_text_rows_with_a_response_template_collator_train_after_the_template(tokenizer, model, make_config):
    """Text rows + DataCollatorForCompletionOnlyLM: the labels stop at the template, batches agree."""
    texts = [f"### Question: What is {i} + {i}?\n### Answer: {2 * i}" for i in range(8)]
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        data_collator=collator,
    )
    assert supervised_text(tokenizer, trainer.train_dataset[3]) == " 6<|eos|>"
    batch = next(iter(trainer.get_train_dataloader()))
    for i in range(batch["labels"].shape[0]):
        kept = batch["labels"][i][batch["labels"][i] != IGNORE]
        assert tokenizer.decode(kept).endswith("<|eos|>") and "Question" not in tokenizer.decode(kept)
    trainer.train()


def test_formatting_func_with_a_template_collator_works_like_old_trl_scripts(tokenizer, model, make_config):
    """The old pattern (formatting_func + response-template collator) trains on the answers only."""
    data = Dataset.from_dict({"q": ["Name a color.", "Name a fruit."] * 4, "a": ["red", "apple"] * 4})
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(),
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer),
        formatting_func=lambda ex: f"### Question: {ex['q']}\n### Answer: {ex['a']}",
    )
    assert supervised_text(tokenizer, trainer.train_dataset[1]) == " apple<|eos|>"


def test_pretokenized_labels_keep_every_user_ignore_value(tokenizer, model, make_config):
    """A -100 the user put in `labels`, even inside the answer, is never overwritten."""
    ids = tokenizer("Q: hi A: hello there")["input_ids"]
    labels = [IGNORE] * 4 + ids[4:]
    labels[-2] = IGNORE
    data = Dataset.from_dict({"input_ids": [ids] * 4, "labels": [labels] * 4})
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["labels"] == labels


def test_pretokenized_completion_mask_alone_masks_the_prompt(tokenizer, model, make_config):
    """Pre-tokenized rows with only a `completion_mask` train on the masked-in tokens."""
    ids = tokenizer("Q: hi A: hello")["input_ids"]
    mask = [0] * 5 + [1] * (len(ids) - 5)
    data = Dataset.from_dict({"input_ids": [ids] * 4, "completion_mask": [mask] * 4})
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["labels"] == [IGNORE] * 5 + ids[5:]


def test_pretokenized_completion_mask_is_merged_into_user_labels(tokenizer, model, make_config):
    """A `completion_mask` next to `labels` masks the prompt instead of being ignored (TRL ignores it)."""
    ids = tokenizer("Q: hi A: hello")["input_ids"]
    mask = [0] * 5 + [1] * (len(ids) - 5)
    data = Dataset.from_dict({"input_ids": [ids] * 4, "labels": [list(ids)] * 4, "completion_mask": [mask] * 4})
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["labels"] == [IGNORE] * 5 + ids[5:]
    assert "completion_mask" not in trainer.train_dataset.column_names


def test_prepadded_rows_are_trimmed_to_their_real_tokens(tokenizer, model, make_config):
    """Rows padded to 128 in advance (the homework pattern) are trimmed using `attention_mask`."""
    ids = tokenizer("Q: hi A: hello")["input_ids"]
    pad = 128 - len(ids)
    data = Dataset.from_dict(
        {
            "input_ids": [ids + [tokenizer.pad_token_id] * pad] * 8,
            "attention_mask": [[1] * len(ids) + [0] * pad] * 8,
            "labels": [[IGNORE] * 5 + ids[5:] + [IGNORE] * pad] * 8,
        }
    )
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["input_ids"] == ids
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].numel() == 4 * len(ids)  # 4 rows of real tokens, no padding (packed or not)


def test_text_rows_without_a_template_say_once_that_the_whole_text_is_trained(
    tokenizer, model, make_config, capture_log
):
    """Plain text has no prompt to mask: the trainer says so once, in the log, and trains on it all."""
    data = Dataset.from_dict({"text": ["hello world", "good morning"] * 4})
    trainer = MaskedSFTTrainer(
        model, args=make_config(), train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    assert sum("no prompt/completion boundary" in r for r in capture_log) == 1
    row = trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]


def test_explicit_completion_only_loss_false_trains_the_whole_sequence_with_one_warning(tokenizer, model, make_config):
    """`completion_only_loss=False` stays the user's choice: whole sequence, one warning."""
    with pytest.warns(MaskedSFTWarning, match="completion_only_loss=False") as record:
        trainer = MaskedSFTTrainer(
            model,
            args=make_config(completion_only_loss=False),
            train_dataset=prompt_completion(),
            processing_class=tokenizer,
        )
    assert len([w for w in record if issubclass(w.category, MaskedSFTWarning)]) == 1
    row = trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]


def test_plain_sftconfig_gets_completion_only_loss_and_the_checks(tokenizer, model, tmp_path):
    """A plain `trl.SFTConfig` (completion_only_loss None) still trains on completions only."""
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_steps=1, max_length=64)
    ids = tokenizer("Q: hi A: hello")["input_ids"]
    data = Dataset.from_dict({"input_ids": [ids] * 4, "completion_mask": [[0] * 5 + [1] * (len(ids) - 5)] * 4})
    trainer = MaskedSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["labels"][:5] == [IGNORE] * 5


# ------------------------------------------------------------------------------------ rows with nothing to learn


def test_truncation_of_every_answer_stops_before_training_with_cause_and_fix(tokenizer, model, make_config):
    """When max_length cuts every answer, construction fails naming the rows, the cause and the fix."""
    with pytest.raises(UnsupervisedRowsError) as info:
        MaskedSFTTrainer(model, args=make_config(max_length=6), train_dataset=qa_rows(), processing_class=tokenizer)
    message = str(info.value)
    assert "16 of 16 rows" in message
    assert "row 0: prompt of 12 tokens truncated at max_length 6" in message
    assert "raise `max_length` (now 6)" in message


def test_prompt_longer_than_max_length_in_one_row_is_named(tokenizer, model, make_config):
    """A single over-long prompt is reported by index with its prompt length."""
    rows = qa_rows(8) + [["word " * 60, " <answer>1</answer>"]]
    with pytest.raises(UnsupervisedRowsError, match=r"row 8: prompt of \d+ tokens truncated at max_length 40"):
        MaskedSFTTrainer(model, args=make_config(max_length=40), train_dataset=rows, processing_class=tokenizer)


def test_drop_policy_drops_rows_within_the_allowed_share(tokenizer, model, make_config):
    """`masked_row_policy='drop'` removes rows with no supervised token when few enough."""
    rows = qa_rows(19) + [["word " * 60, " <answer>1</answer>"]]
    config = make_config(max_length=40, masked_row_policy="drop", max_masked_row_fraction=0.1)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer)
    assert len(trainer.train_dataset) == 19


def test_warn_policy_warns_naming_the_dropped_rows(tokenizer, model, make_config):
    """`masked_row_policy='warn'` drops the rows and names them in a warning."""
    rows = qa_rows(19) + [["word " * 60, " <answer>1</answer>"]]
    config = make_config(max_length=40, masked_row_policy="warn")
    with pytest.warns(MaskedSFTWarning, match=r"row 19: prompt of"):
        trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer)
    assert len(trainer.train_dataset) == 19


def test_drop_policy_fails_past_the_allowed_share(tokenizer, model, make_config):
    """Dropping more than `max_masked_row_fraction` of the rows fails instead of shrinking the data silently."""
    rows = qa_rows(4) + [["word " * 60, " <answer>1</answer>"]] * 2
    config = make_config(max_length=40, masked_row_policy="drop", max_masked_row_fraction=0.1)
    with pytest.raises(UnsupervisedRowsError, match="max_masked_row_fraction"):
        MaskedSFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer)


def test_eval_dataset_gets_the_same_preflight(tokenizer, model, make_config):
    """Eval rows with no supervised token are caught too, named as the eval dataset."""
    bad = [["word " * 60, " <answer>1</answer>"]] * 2
    with pytest.raises(UnsupervisedRowsError, match="of the eval dataset"):
        MaskedSFTTrainer(
            model,
            args=make_config(max_length=40),
            train_dataset=qa_rows(),
            eval_dataset=bad,
            processing_class=tokenizer,
        )


def test_empty_completion_is_reported_by_row(tokenizer, model, make_config):
    """An empty completion would train only `eos`: the row is named with the reason and the fix."""
    rows = qa_rows(4) + [["What is 1 km in m?", "  "]]
    with pytest.raises(UnsupervisedRowsError, match=r"(?s)row 4: empty completion.*Fix: fill in or remove"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=rows, processing_class=tokenizer)


def test_response_template_absent_from_a_row_is_reported_by_row(tokenizer, model, make_config):
    """A text row without the response template is named before training."""
    texts = ["### Question: a?\n### Answer: b"] * 3 + ["no template here at all"]
    with pytest.raises(UnsupervisedRowsError, match=r"row 3: response template not found"):
        MaskedSFTTrainer(
            model,
            args=make_config(),
            train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=tokenizer,
            data_collator=DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer),
        )


# --------------------------------------------------------------------------------------------- bad input


def test_missing_columns_name_the_columns_seen_and_the_fields(tokenizer, model, make_config):
    """A dataset with no trainable column says which columns it has and which field to set."""
    data = Dataset.from_dict({"question": ["a?"], "answer": ["b"]})
    with pytest.raises(DatasetFormatError, match=r"columns \['question', 'answer'\].*prompt_column='question'"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)


def test_missing_completion_column_names_the_field(tokenizer, model, make_config):
    """A prompt column with no completion column names `completion_column`."""
    data = Dataset.from_dict({"prompt": ["a?"], "reply": ["b"]})
    with pytest.raises(DatasetFormatError, match=r"no `completion` column.*set `completion_column`"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)


def test_none_value_names_row_and_column(tokenizer, model, make_config):
    """A None prompt or completion is reported with its row, column and the fix."""
    data = Dataset.from_dict({"prompt": ["a?", "b?"], "completion": [" x", None]})
    with pytest.raises(DatasetTypeError, match=r"Row 1 of the train dataset: column `completion` .*NoneType"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)


def test_non_string_value_in_a_homework_pair_names_row_and_type(tokenizer, model, make_config):
    """A dict where a string belongs is a TypeError naming the row, not an Arrow traceback."""
    rows = [["a?", " x"], ["b?", {"value": 3}]]
    with pytest.raises(TypeError, match=r"Row 1 of the train dataset: column `completion` must be a string, got dict"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=rows, processing_class=tokenizer)


def test_labels_length_mismatch_names_the_row(tokenizer, model, make_config):
    """Labels shorter than input_ids are reported with both lengths."""
    data = Dataset.from_dict({"input_ids": [[5, 6, 7, 8], [5, 6, 7]], "labels": [[-100, 6, 7, 8], [-100, 6]]})
    with pytest.raises(DatasetFormatError, match=r"Row 1 .*`labels` has 2 entries but `input_ids` has 3"):
        MaskedSFTTrainer(model, args=make_config(), train_dataset=data, processing_class=tokenizer)


def test_tokenizer_without_pad_token_gets_eos_and_says_so(make_config, capture_log):
    """No pad token is not an error: the eos token is used, the log says so, eos stays supervised."""
    tokenizer = build_tiny_tokenizer(pad_token=None)
    config = make_config(pack_within_batch=False)  # the padded batch layout, read below
    trainer = MaskedSFTTrainer(
        build_tiny_model(tokenizer), args=config, train_dataset=qa_rows(), processing_class=tokenizer
    )
    assert tokenizer.pad_token == tokenizer.eos_token
    assert any("had no pad token" in r for r in capture_log)
    assert trainer.train_dataset[0]["labels"][-1] == tokenizer.eos_token_id
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    for i, n in enumerate(lengths.tolist()):
        assert batch["labels"][i, n - 1].item() == tokenizer.eos_token_id


def test_collator_that_overwrites_labels_is_refused(tokenizer, model, make_config):
    """A collator that trains on the prompt (labels rebuilt from input_ids) is caught before training."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    with pytest.raises(LabelsOverwrittenError, match="overwrites the labels"):
        MaskedSFTTrainer(
            model, args=make_config(), train_dataset=qa_rows(), processing_class=tokenizer, data_collator=collator
        )


# ---------------------------------------------------------------------------------------- batch validation


def test_all_masked_batch_raises_before_forward(tokenizer, model, make_config):
    """A batch with no supervised label raises AllMaskedBatchError and the model never runs on it."""

    def masking_collator(features):
        batch = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer)(features)
        batch["labels"][:] = IGNORE
        return batch

    with pytest.warns(MaskedSFTWarning, match="masks"):
        trainer = MaskedSFTTrainer(
            model,
            args=make_config(),
            train_dataset=qa_rows(),
            processing_class=tokenizer,
            data_collator=masking_collator,
        )
    calls = []
    trainer.model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(AllMaskedBatchError, match=r"train batch at step 0 has no supervised token.*rows 0-3"):
        trainer.train()
    assert calls == []


# ------------------------------------------------------------------------------------------------ PEFT


def test_peft_config_sets_label_names_when_none_given(tokenizer, model, tmp_path):
    """With a peft_config and a plain SFTConfig (label_names None), label_names becomes ["labels"]."""
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=64)
    trainer = MaskedSFTTrainer(
        model, args=args, train_dataset=qa_rows(), processing_class=tokenizer, peft_config=homework_lora_config()
    )
    assert trainer.args.label_names == ["labels"] and trainer.label_names == ["labels"]


def test_explicit_label_names_are_never_overridden(tokenizer, model, make_config):
    """A user's own label_names stay as given."""
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(label_names=["labels", "extra"]),
        train_dataset=qa_rows(),
        processing_class=tokenizer,
        peft_config=homework_lora_config(),
    )
    assert trainer.label_names == ["labels", "extra"]


def test_plain_model_label_names_are_left_to_transformers(tokenizer, model, tmp_path):
    """Without PEFT and without label_names, the trainer leaves the choice to transformers."""
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=64)
    trainer = MaskedSFTTrainer(model, args=args, train_dataset=qa_rows(), processing_class=tokenizer)
    assert trainer.args.label_names is None
    assert trainer.label_names == ["labels"]


def test_peft_model_without_task_type_warns(tokenizer, model, make_config):
    """A PeftModel whose config has no task_type gets a warning with the fix."""
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with pytest.warns(MaskedSFTWarning, match="task_type='CAUSAL_LM'"):
        MaskedSFTTrainer(
            peft_model, args=make_config(label_names=None), train_dataset=qa_rows(), processing_class=tokenizer
        )


def test_peft_model_passed_directly_gets_label_names(tokenizer, model, tmp_path):
    """A model that is already a PeftModel gets label_names ["labels"] too."""
    peft_model = get_peft_model(model, homework_lora_config(r=4))
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=64)
    trainer = MaskedSFTTrainer(peft_model, args=args, train_dataset=qa_rows(), processing_class=tokenizer)
    assert trainer.args.label_names == ["labels"]


def test_eval_loss_is_reported_for_a_peft_model(tokenizer, model, make_config):
    """evaluate() on a LoRA model reports a finite eval_loss."""
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(per_device_eval_batch_size=4),
        train_dataset=qa_rows(),
        eval_dataset=qa_rows(8),
        processing_class=tokenizer,
        peft_config=homework_lora_config(),
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and torch.isfinite(torch.tensor(metrics["eval_loss"]))


# ------------------------------------------------------------------------------------------------ the loss


def test_trainer_loss_equals_cross_entropy_over_completion_tokens(tokenizer, model, make_config):
    """The trainer's loss is the mean token cross-entropy over completion tokens, computed by hand (1e-6)."""
    config = make_config(pack_within_batch=False)  # the padded batch layout (test_packing.py checks the packed one)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=qa_rows(8), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # by hand: predict token t+1 from position t, only where the label is a completion token
    targets = batch["labels"][:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    keep = targets != IGNORE
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = -(picked * keep).sum() / keep.sum()
    prompt_len = len(tokenizer("How many meters are there in 1 km?")["input_ids"])
    assert keep[0, : prompt_len - 1].sum() == 0  # no prompt token counted
    assert loss == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.slow
def test_short_training_run_lowers_the_loss_and_changes_the_adapter(tokenizer, model, make_config):
    """A real LoRA run: the loss falls and the adapter weights change."""
    config = make_config(max_steps=40, learning_rate=3e-3, per_device_train_batch_size=8, logging_steps=5)
    trainer = MaskedSFTTrainer(
        model, args=config, train_dataset=qa_rows(64), processing_class=tokenizer, peft_config=homework_lora_config()
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.7 * losses[0], losses
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora" in n for n in changed)
