"""`policies`: every row verdict has one interface, and the pipeline, the stream, the report and the audit page loop
over `VERDICTS`, so a new policy is one class (and one config field) and nothing else."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
from datasets import Dataset, IterableDataset

from trl_masked_sft import MaskedSFTConfig, MaskingOptions, PreparationPipeline, policies
from trl_masked_sft.audit_html import render_audit_html
from trl_masked_sft.config_checks import _CHOICES
from trl_masked_sft.errors import DatasetFormatError
from trl_masked_sft.policies import COUNT, POLICY_CHOICES, VERDICTS, RowVerdict

ROWS = {
    "prompt": ["How many grams are there in 3 kg?", "Convert 5 hour to minutes.", "2 m in cm?"],
    "completion": [" <answer>3000.0</answer>", " <answer>300.0</answer>", " 200"],
}


@dataclasses.dataclass
class ShortAnswer(RowVerdict):
    """The docs' worked example (docs/policies.md): rows that train fewer than 4 tokens."""

    policy_field, fraction_field = "short_answer_policy", "max_short_answer_fraction"
    default, default_fraction = "error", 0.5
    error = DatasetFormatError
    warn_keeps = True
    fraction_says = "`short_answer_policy='warn'` accept"
    page_title = "Rows with a short answer"
    detail_header: ClassVar[str] = "supervised tokens"

    @classmethod
    def find(cls, columns, *, taken, ignore_index, max_length):
        return {i: n for i, n in enumerate(columns[COUNT]) if 0 < n < 4 and i not in taken}

    def line(self, index: int) -> str:
        return f"{self.rows[index]} supervised tokens"

    def headline(self) -> str:
        return (
            f"{len(self.rows)} of {self.num_rows} rows of the {self.dataset_name} dataset train fewer than 4 tokens."
        )

    def fix(self) -> str:
        return "Fix: write longer answers, or set `short_answer_policy='drop'`."


@pytest.fixture
def with_short_answers(monkeypatch):
    monkeypatch.setattr(policies, "VERDICTS", (*VERDICTS, ShortAnswer))
    for module in ("audit_html", "pipeline", "streaming"):
        monkeypatch.setattr(f"trl_masked_sft.{module}.VERDICTS", (*VERDICTS, ShortAnswer), raising=False)


def test_every_verdict_has_the_same_interface():
    """Each verdict names its config fields, default, error and report columns, and answers the same methods."""
    for verdict in VERDICTS:
        assert verdict.default in POLICY_CHOICES and 0 <= verdict.default_fraction <= 1
        assert _CHOICES[verdict.policy_field] == POLICY_CHOICES
        field = MaskedSFTConfig.__dataclass_fields__[verdict.policy_field]
        assert field.metadata["choices"] == list(POLICY_CHOICES) and field.default == verdict.default
        assert MaskedSFTConfig.__dataclass_fields__[verdict.fraction_field].default == verdict.default_fraction
        for method in ("find", "describe", "fix", "enforce", "outcome", "streamed_error", "streamed_many"):
            assert callable(getattr(verdict, method))


def test_a_new_verdict_is_enforced_reported_and_shown_without_other_changes(tokenizer, with_short_answers):
    """A verdict added to `VERDICTS` stops `prepare`, is recorded in the report and gets its section on the page."""
    rows = Dataset.from_dict(ROWS)
    with pytest.raises(DatasetFormatError, match="1 of 3 rows of the train dataset train fewer than 4 tokens"):
        PreparationPipeline(tokenizer, MaskingOptions()).prepare(rows)
    audited = PreparationPipeline(tokenizer, MaskingOptions()).prepare(rows, enforce=False)
    assert audited.report.more_verdicts["short_answer_policy"]["rows"] == 1
    assert "short_answer_policy='error'" in audited.report.policy_error
    assert "more_verdicts" in audited.report.to_dict()
    page = render_audit_html(audited.report, audited.supervised_counts, [])
    assert "<h2>Rows with a short answer</h2>" in page and "`short_answer_policy=error`" in page


def test_a_new_verdict_judges_streamed_rows(tokenizer, with_short_answers):
    """The streaming path loops over the same verdicts: the new one raises at its first row."""
    stream = IterableDataset.from_generator(lambda: iter(Dataset.from_dict(ROWS)))
    prepared = PreparationPipeline(tokenizer, MaskingOptions()).prepare(stream)
    with pytest.raises(
        DatasetFormatError,
        match=r"Row 2 of the streamed train dataset is judged by `short_answer_policy` \(\d supervised tokens\)",
    ):
        list(prepared.dataset)


def test_the_report_json_has_no_extra_key_without_new_verdicts(tokenizer):
    """With the built-in verdicts only, the audit JSON has the keys it always had."""
    report = PreparationPipeline(tokenizer, MaskingOptions()).prepare(Dataset.from_dict(ROWS), enforce=False).report
    assert "more_verdicts" not in report.to_dict()
