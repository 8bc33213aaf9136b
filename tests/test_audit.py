"""The pre-flight audit report, config response templates, and truncation that keeps the completion."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from trl_masked_sft import MaskedSFTTrainer
from trl_masked_sft.masking import truncate_row

IGNORE = -100


def rows(n: int = 12, prompt_words: int = 1) -> list[list[str]]:
    return [[("word " * prompt_words) + f"What is {i} km in m?", f" <answer>{i * 1000}</answer>"] for i in range(n)]


def kept(tokenizer, row) -> str:
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])


def test_truncate_row_keeps_the_start_by_default():
    """Without `min_completion`, rows are cut at the end (TRL's keep_start)."""
    assert truncate_row(list(range(10)), [IGNORE] * 6 + list(range(6, 10)), 8) == (
        list(range(8)),
        [IGNORE] * 6 + [6, 7],
    )


def test_truncate_row_cuts_the_prompt_from_the_left_to_keep_completion_tokens():
    """With `min_completion`, the prompt loses its first tokens so the completion survives."""
    ids, labels = truncate_row(list(range(10)), [IGNORE] * 7 + [7, 8, 9], 6, min_completion=3)
    assert ids == [4, 5, 6, 7, 8, 9] and labels == [IGNORE] * 3 + [7, 8, 9]


def test_truncate_row_keeps_one_prompt_token_and_cuts_a_long_completion_end():
    """The first completion token is never moved to position 0 (it would not be trained)."""
    ids, labels = truncate_row(list(range(10)), [IGNORE] * 2 + list(range(2, 10)), 4, min_completion=3)
    assert ids == [1, 2, 3, 4] and labels == [IGNORE, 2, 3, 4]


def test_min_completion_tokens_rescues_rows_whose_prompt_fills_max_length(tokenizer, model, make_config):
    """Long prompts that would leave no answer token keep their answer when `min_completion_tokens` is set."""
    data = rows(prompt_words=30)
    with pytest.raises(Exception, match="truncated at max_length"):
        MaskedSFTTrainer(model, args=make_config(max_length=40), train_dataset=data, processing_class=tokenizer)
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(max_length=40, min_completion_tokens=20),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert kept(tokenizer, trainer.train_dataset[3]) == " <answer>3000</answer><|eos|>"
    assert all(len(ids) <= 40 for ids in trainer.train_dataset["input_ids"])


def test_audit_report_counts_rows_tokens_and_truncated_completions(tokenizer, model, make_config):
    """The report counts rows, partly truncated completions, stop tokens not trained and supervised tokens."""
    data = rows(8) + [["What is 9 km in m?", " <answer>9000 and a long explanation of it</answer>"]]
    longest = max(len(tokenizer(q + a)["input_ids"]) + 1 for q, a in data[:8])  # + eos
    config = make_config(max_length=longest)
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    report = trainer.audit_reports["train"]
    assert report.rows == 9 and report.rows_fully_masked == 0
    assert report.rows_completion_truncated == 1 and report.rows_stop_token_not_supervised == 1
    counts = [sum(lab != IGNORE for lab in labels[1:]) for labels in trainer.train_dataset["labels"]]
    assert (report.supervised_tokens_min, report.supervised_tokens_max) == (min(counts), max(counts))
    total = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    assert report.supervised_token_share == pytest.approx(sum(counts) / total)


def test_audit_report_is_written_to_the_output_dir_at_train_start(tokenizer, model, make_config, tmp_path):
    """train() writes masked_sft_audit.json with one entry per prepared dataset."""
    config = make_config(output_dir=str(tmp_path / "run"), max_steps=1)
    trainer = MaskedSFTTrainer(
        model, args=config, train_dataset=rows(), eval_dataset=rows(4), processing_class=tokenizer
    )
    trainer.train()
    report = json.loads((tmp_path / "run" / "masked_sft_audit.json").read_text())
    assert set(report) == {"train", "eval"} and report["train"]["rows"] == 12


def test_dropped_rows_are_counted_in_the_report(tokenizer, model, make_config):
    """With the drop policy, the report keeps the original row count and says how many went."""
    data = rows(19) + [["word " * 60, " <answer>1</answer>"]]
    config = make_config(max_length=40, masked_row_policy="drop")
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    report = trainer.audit_reports["train"]
    assert (report.rows, report.rows_fully_masked, report.rows_dropped) == (20, 1, 1)
    assert "truncated at max_length 40" in report.unsupervised_rows[19]


def test_config_response_template_masks_text_rows(tokenizer, model, make_config):
    """`response_template` in the config masks `text` rows without passing a collator."""
    texts = [f"### Question: {i} + {i}?\n### Answer: {2 * i}" for i in range(8)]
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(response_template="### Answer:"),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    assert kept(tokenizer, trainer.train_dataset[2]) == " 4<|eos|>"


def test_config_instruction_template_trains_every_response_of_multi_turn_text(tokenizer, model, make_config):
    """With `instruction_template` too, every response of an alternating text row is trained."""
    text = "### Question: a?\n### Answer: one\n### Question: b?\n### Answer: two"
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(response_template="### Answer:", instruction_template="### Question:"),
        train_dataset=Dataset.from_dict({"text": [text] * 4}),
        processing_class=tokenizer,
    )
    assert kept(tokenizer, trainer.train_dataset[0]) == " one\n two<|eos|>"


def test_the_audit_message_shows_a_prompt_cut_inside_a_character_as_whole_characters(tokenizer, make_config):
    """A Chinese prompt truncated at `max_length` in the middle of a character: the message's `prompt ends` shows
    whole characters after `…`, no `�` (the byte-level BPE splits each character over three tokens)."""
    from trl_masked_sft import audit_dataset

    prompt = "请问温度是多少摄氏度呢" * 10
    ids = tokenizer(prompt)["input_ids"]
    cut = next(n for n in range(200, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    report = audit_dataset([[prompt, " <answer>20</answer>"]], tokenizer, make_config(max_length=cut))
    assert report.policy_error and "\ufffd" not in report.policy_error
    tail = report.policy_error.split("prompt ends '")[1].split("'")[0]
    assert tail.startswith("…") and tail[1:] in prompt
    assert len(tail) == 61 and tokenizer.decode(ids[:cut]).rstrip("\ufffd").endswith(tail[1:])


def test_the_supervised_tokens_per_row_count_every_row_as_the_histogram_does(tokenizer, make_config):
    """min / median / max count every row, fully masked ones as 0, the same numbers the audit page's histogram
    shows (`PreparedDataset.supervised_counts`)."""
    import statistics

    from trl_masked_sft.pipeline import PreparationPipeline

    data = rows(6) + [["word " * 40 + "What is 9 km in m?", " <answer>9000</answer>"]] * 2
    config = make_config(max_length=24, masked_row_policy="warn", max_masked_row_fraction=0.5)
    prepared = PreparationPipeline.from_config(tokenizer, config).prepare(data, "train", enforce=False)
    counts, report = prepared.supervised_counts, prepared.report
    assert report.rows_fully_masked == 2 and counts.count(0) == 2 and len(counts) == report.rows == 8
    spread = (report.supervised_tokens_min, report.supervised_tokens_median, report.supervised_tokens_max)
    assert spread == (0, statistics.median(counts), max(counts))
    assert "per row (all 8 rows, 2 with none)" in report.summary()
