"""Completions cut by `max_length` before their stop token follow `truncated_completion_policy`."""

from __future__ import annotations

import json
import warnings

import pytest
from datasets import IterableDataset

from trl_masked_sft import (
    ConfigError,
    MaskedSFTConfig,
    MaskedSFTTrainer,
    MaskedSFTWarning,
    TruncatedCompletionError,
    audit_dataset,
)
from trl_masked_sft.audit_html import render_audit_html
from trl_masked_sft.metrics import audit_logs

IGNORE = -100


def rows(n_long: int, n_short: int) -> list[dict]:
    """`n_long` rows whose answer is far longer than 40 tokens, then `n_short` that fit."""
    long = [{"prompt": f"Explain step {i}:", "completion": " word" * 80} for i in range(n_long)]
    short = [{"prompt": f"How many m in {i} km?", "completion": f" {i * 1000}"} for i in range(n_short)]
    return long + short


def test_default_policy_warns_naming_the_rows_lengths_and_fix(tokenizer, model, make_config):
    """A few cut completions: training may start, with a warning naming rows, lengths and `max_length`."""
    with pytest.warns(MaskedSFTWarning) as caught:
        trainer = MaskedSFTTrainer(
            model, args=make_config(max_length=40), train_dataset=rows(2, 8), processing_class=tokenizer
        )
    message = "\n".join(str(w.message) for w in caught if "stop token" in str(w.message))
    assert "2 of 10 rows (20.0%) of the train dataset" in message
    assert "row 0:" in message and "row 1:" in message and "tokens" in message
    assert "raise `max_length` (now 40)" in message
    assert len(trainer.train_dataset) == 10  # kept: they still teach the start of the answer
    report = trainer.audit_reports["train"]
    assert report.rows_stop_token_truncated == 2
    assert set(report.stop_truncated_rows) == {0, 1}


def test_most_rows_losing_their_stop_token_stops_before_training(tokenizer, model, make_config):
    """More than `max_truncated_completion_fraction` (default 0.5) of the rows cut: an error, not a warning."""
    with pytest.raises(TruncatedCompletionError) as info:
        MaskedSFTTrainer(model, args=make_config(max_length=40), train_dataset=rows(6, 4), processing_class=tokenizer)
    message = str(info.value)
    assert "6 of 10 rows (60.0%)" in message
    assert "`max_truncated_completion_fraction` (50.0%)" in message
    assert "raise `max_length` (now 40)" in message


def test_swapped_in_config_names_its_max_length_default_against_sftconfig(tokenizer, model, tmp_path):
    """A user who swapped MaskedSFTConfig in for SFTConfig learns that max_length 128 is our default, not TRL's 1024."""
    config = MaskedSFTConfig(output_dir=str(tmp_path), report_to="none", save_strategy="no", max_steps=1)
    data = [{"prompt": f"Q{i}:", "completion": " word" * 200} for i in range(4)]
    with pytest.raises(TruncatedCompletionError, match=r"`max_length=128` is MaskedSFTConfig's default \(SFTConfig"):
        MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)


def test_error_policy_stops_at_one_cut_row(tokenizer, model, make_config):
    """`truncated_completion_policy='error'` refuses any row whose stop token is cut."""
    config = make_config(max_length=40, truncated_completion_policy="error")
    with pytest.raises(TruncatedCompletionError, match=r"(?s)1 of 9 rows.*`truncated_completion_policy='error'`"):
        MaskedSFTTrainer(model, args=config, train_dataset=rows(1, 8), processing_class=tokenizer)


def test_drop_policy_drops_the_cut_rows(tokenizer, model, make_config):
    """`'drop'` removes them (the report counts them as dropped); no warning."""
    config = make_config(max_length=40, truncated_completion_policy="drop")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(2, 8), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 8
    assert trainer.audit_reports["train"].rows_dropped == 2
    for labels in trainer.train_dataset["labels"]:
        assert [lab for lab in labels if lab != IGNORE][-1] == tokenizer.eos_token_id


def test_rows_that_fit_say_nothing(tokenizer, model, make_config):
    """No cut row, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=rows(0, 8), processing_class=tokenizer)
    assert trainer.audit_reports["train"].rows_stop_token_truncated == 0


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("truncated_completion_policy", "ignore", r"`truncated_completion_policy` must be one of .*got 'ignore'"),
        ("max_truncated_completion_fraction", 1.5, r"`max_truncated_completion_fraction` must be a share .*1.5"),
        ("max_truncated_completion_fraction", "0.5", r"`max_truncated_completion_fraction` must be a finite number"),
    ],
)
def test_new_fields_are_checked_at_construction(tmp_path, field, value, match):
    """Each bad value names the field and the value."""
    with pytest.raises(ConfigError, match=match):
        MaskedSFTConfig(output_dir=str(tmp_path), **{field: value})


def test_new_fields_help_matches_the_docstring():
    """TRL style: each field's help says what its `Args:` entry says (with `%%` for argparse)."""
    doc = " ".join(MaskedSFTConfig.__doc__.split())
    for name in ("truncated_completion_policy", "max_truncated_completion_fraction"):
        help_text = MaskedSFTConfig.__dataclass_fields__[name].metadata["help"].replace("%%", "%")
        assert " ".join(help_text.split()) in doc


def test_audit_json_html_and_scalars_show_the_cut_rows(tokenizer, model, make_config, tmp_path):
    """The JSON report, the audit page and the TensorBoard scalars carry the count and the rows."""
    config = make_config(max_length=40, output_dir=str(tmp_path / "run"), max_steps=1)
    with pytest.warns(MaskedSFTWarning):
        trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(2, 8), processing_class=tokenizer)
    trainer.train()
    data = json.loads((tmp_path / "run" / "masked_sft_audit.json").read_text())["train"]
    assert data["rows_stop_token_truncated"] == 2 and data["truncated_completion_policy"] == "warn"
    assert set(data["stop_truncated_rows"]) == {"0", "1"}
    report = trainer.audit_reports["train"]
    assert audit_logs(report)["audit/rows_stop_token_truncated"] == 2.0
    page = render_audit_html(report, [1] * report.rows, [])
    assert "rows whose completion is cut before its stop token" in page and "truncated_completion_policy" in page


def test_audit_dataset_reports_the_policy_error_without_raising(tokenizer):
    """`audit_dataset` keeps every row and says what the policy would raise."""
    config = MaskedSFTConfig(output_dir="unused", max_length=40)
    report = audit_dataset(rows(6, 4), tokenizer, config)
    assert report.rows_stop_token_truncated == 6
    assert "max_truncated_completion_fraction" in report.policy_error
    page = render_audit_html(report, [1] * report.rows, [])
    assert "Training would stop" in page and "truncated_completion_policy=warn" in page


def test_streamed_rows_follow_the_policy(tokenizer, model, make_config):
    """A stream is checked as read: `'error'` raises at the first cut row, naming it."""
    config = make_config(max_length=40, truncated_completion_policy="error", max_steps=1)
    stream = IterableDataset.from_generator(lambda: iter(rows(0, 3) + rows(1, 0)))
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=stream, processing_class=tokenizer)
    with pytest.raises(TruncatedCompletionError, match=r"(?s)Row 3 of the streamed train dataset.*stop token"):
        list(trainer.train_dataset)


def test_audit_line_names_the_kept_defaults_that_differ_from_sftconfig_once(tokenizer, model, tmp_path, capture_logs):
    """The pre-flight line says, once, which MaskedSFTConfig defaults differ from SFTConfig's and were left as is."""
    said = capture_logs("trl_masked_sft")
    config = MaskedSFTConfig(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", learning_rate=1e-4, max_steps=1
    )
    MaskedSFTTrainer(model, args=config, train_dataset=rows(0, 8), eval_dataset=rows(0, 4), processing_class=tokenizer)
    lines = [line for line in said if "differ from SFTConfig's" in line]
    assert len(lines) == 1
    assert "`max_length=128` (SFTConfig: 1024)" in lines[0]
    assert "`per_device_train_batch_size=32` (SFTConfig: 8)" in lines[0]
    assert "learning_rate" not in lines[0] and "save_strategy" not in lines[0]  # set by the user


def test_a_plain_sftconfig_names_no_kept_default(tokenizer, model, tmp_path, capture_logs):
    """SFTConfig's own defaults are not ours to report."""
    from trl import SFTConfig

    said = capture_logs("trl_masked_sft")
    config = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", save_strategy="no", max_steps=1)
    MaskedSFTTrainer(model, args=config, train_dataset=rows(0, 8), processing_class=tokenizer)
    assert said and not [line for line in said if "differ from SFTConfig's" in line]


def test_a_plain_sftconfig_keeps_trls_behaviour_with_the_warning(tokenizer, model, tmp_path):
    """Drop-in parity: with `SFTConfig(max_length=...)` chosen by the user, every row cut still trains, said once."""
    from trl import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", max_length=40, max_steps=1)
    with pytest.warns(MaskedSFTWarning, match=r"10 of 10 rows \(100.0%\) .* lose their stop token"):
        trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows(10, 0), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 10
