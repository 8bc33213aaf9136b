"""The pre-flight audit report: what a prepared dataset will train on, row by row, summed up."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .validation import RowAudit, audit_labels

__all__ = ["AUDIT_COLUMNS", "AuditReport", "build_report"]

# Per-row columns the trainer's pre-flight pass adds to a prepared dataset (removed before training).
FULL_COUNT, FULL_FIRST, REASON = "_msft_full_count", "_msft_full_first", "_msft_reason"
COUNT, STOP_OK, LENGTH = "_msft_count", "_msft_stop_ok", "_msft_length"
AUDIT_COLUMNS = [FULL_COUNT, FULL_FIRST, REASON, COUNT, STOP_OK, LENGTH]


@dataclass
class AuditReport:
    """What one prepared dataset trains on. `rows` counts rows before any were dropped."""

    dataset_name: str
    rows: int
    max_length: int | None
    rows_fully_masked: int
    rows_completion_truncated: int
    rows_stop_token_not_supervised: int
    #: supervised tokens per row over all `rows` rows, those with none counted as 0 (as the audit page's histogram)
    supervised_tokens_min: int
    supervised_tokens_median: float
    supervised_tokens_max: int
    supervised_token_share: float
    #: dataset index -> why the row has no supervised token (first 50)
    unsupervised_rows: dict[int, str] = field(default_factory=dict)
    rows_dropped: int = 0
    policy: str = "error"
    #: what `masked_row_policy` would say (the error message), or `None` when training may start
    policy_error: str | None = None

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"Pre-flight audit of the {self.dataset_name} dataset: {self.rows} rows, {self.rows_fully_masked} with no "
            f"supervised token, {self.rows_completion_truncated} with a truncated completion, "
            f"{self.rows_stop_token_not_supervised} whose stop token is not trained; supervised tokens per row (all "
            f"{self.rows} rows, {self.rows_fully_masked} with none) min/median/max {self.supervised_tokens_min}/{self.supervised_tokens_median:g}/"
            f"{self.supervised_tokens_max}, {self.supervised_token_share:.1%} of all tokens."
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unsupervised_rows"] = {str(k): v for k, v in self.unsupervised_rows.items()}
        return data

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def build_report(
    dataset, *, dataset_name: str, max_length: int | None, policy: str = "error"
) -> tuple[AuditReport, RowAudit]:
    """Build the report and the per-row verdict from a dataset carrying the pre-flight columns.

    `dataset` is what the trainer's pre-flight pass produces (truncated `input_ids`/`labels` plus the per-row
    columns named in `AUDIT_COLUMNS`); `audit_dataset` audits raw rows.
    """
    reasons = {i: r for i, r in enumerate(dataset[REASON]) if r}
    counts, full_counts = dataset[COUNT], dataset[FULL_COUNT]
    verdict = audit_labels(
        supervised_counts=counts,
        full_supervised=full_counts,
        full_first=dataset[FULL_FIRST],
        dataset_name=dataset_name,
        max_length=max_length,
        preset_reasons=reasons,
    )
    lengths = dataset[LENGTH]
    every = list(counts) or [0]  # every row, fully masked ones as 0: the rows the audit page's histogram shows
    report = AuditReport(
        dataset_name=dataset_name,
        rows=len(counts),
        max_length=max_length,
        rows_fully_masked=len(verdict.unsupervised),
        rows_completion_truncated=sum(1 for c, f in zip(counts, full_counts, strict=True) if 0 < c < f),
        rows_stop_token_not_supervised=sum(
            1 for i, ok in enumerate(dataset[STOP_OK]) if not ok and i not in verdict.unsupervised
        ),
        supervised_tokens_min=min(every),
        supervised_tokens_median=statistics.median(every),
        supervised_tokens_max=max(every),
        supervised_token_share=sum(counts) / max(1, sum(lengths)),
        unsupervised_rows=dict(list(verdict.unsupervised.items())[:50]),
        policy=policy,
    )
    return report, verdict
