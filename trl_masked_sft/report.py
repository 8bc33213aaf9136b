"""The pre-flight audit report: what a prepared dataset will train on, row by row, summed up."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .masking import IGNORE_INDEX
from .policies import (
    COUNT,
    FULL_COUNT,
    LENGTH,
    MERGED,
    MERGED_HEADER,
    STOP_OK,
    CutStopToken,
    RowVerdict,
    find_verdicts,
)

__all__ = ["AuditReport", "StopTruncation", "build_report", "save_audits"]

#: The verdict on rows whose stop token truncation cut, under its former name.
StopTruncation = CutStopToken


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
    #: rows whose completion truncation cut before its stop token (`truncated_completion_policy`)
    rows_stop_token_truncated: int = 0
    #: dataset index -> that row's lengths (first 50)
    stop_truncated_rows: dict[int, str] = field(default_factory=dict)
    truncated_completion_policy: str = "warn"
    #: the spread of the per-message weights over the supervised tokens (`min`, `mean`, `max`, `share_not_1`), or
    #: `None` when no message carries a weight (`message_weight_key`)
    token_weights: dict[str, float] | None = None
    #: verdicts without fields of their own above: policy field -> `{"rows": count, "first_rows": {index: detail},
    #: "policy": policy}`
    more_verdicts: dict[str, dict] = field(default_factory=dict)

    def fill(self, verdict: RowVerdict, policy: str, limit: int = 50) -> None:
        """Record `verdict`'s number of rows, its first `limit` rows' details and its `policy`."""
        first = {i: verdict.detail(i) for i in list(verdict.rows)[:limit]}
        if verdict.report_fields is None:
            self.more_verdicts[verdict.policy_field] = {
                "rows": len(verdict.rows),
                "first_rows": first,
                "policy": policy,
            }
            return
        count, rows, policy_field = verdict.report_fields
        setattr(self, count, len(verdict.rows))
        setattr(self, rows, first)
        setattr(self, policy_field, policy)

    def verdict_rows(self, verdict: type[RowVerdict]) -> tuple[int, dict, str]:
        """`(rows, first rows' details, policy)` that `fill` recorded for `verdict`."""
        if verdict.report_fields is None:
            found = self.more_verdicts.get(verdict.policy_field, {})
            return found.get("rows", 0), found.get("first_rows", {}), found.get("policy", verdict.default)
        return tuple(getattr(self, name) for name in verdict.report_fields)

    #: prompt/completion rows whose prompt and completion merge into one token when tokenized together; they are
    #: tokenized apart (the prompt's ids, then the completion's), so no prompt byte is trained (`text_rows`)
    rows_merged_boundary: int = 0
    #: conversations with a reply whose first bytes merged with the assistant header into one token, left untrained
    rows_merged_header: int = 0
    #: the stop set the end-of-turn rule used, as `'<token>' (source)` items ('' for the default)
    stop_set: str = ""

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"Pre-flight audit of the {self.dataset_name} dataset: {self.rows} rows, {self.rows_fully_masked} with no "
            f"supervised token, {self.rows_completion_truncated} with a truncated completion, "
            f"{self.rows_stop_token_not_supervised} whose stop token is not trained ({self.rows_stop_token_truncated} "
            f"cut by max_length), {self.rows_merged_boundary} whose prompt and completion merge across their boundary "
            "when tokenized together (tokenized apart: the prompt is not trained, the whole completion is); "
            f"supervised tokens per row (all {self.rows} rows, {self.rows_fully_masked} with none) "
            f"min/median/max {self.supervised_tokens_min}/{self.supervised_tokens_median:g}/"
            f"{self.supervised_tokens_max}, {self.supervised_token_share:.1%} of all tokens."
            + (
                f" {self.rows_merged_header} rows with a reply whose first token merged with the header (not trained)."
                if self.rows_merged_header
                else ""
            )
            + (f" Stop set: {self.stop_set}." if self.stop_set else "")
            + (f" {self.weights_line()}" if self.token_weights else "")
        )

    def weights_line(self) -> str:
        """The weight spread in words ('' when unweighted)."""
        w = self.token_weights
        if not w:
            return ""
        return (
            f"Per-message weights on the supervised tokens: min/mean/max {w['min']:g}/{w['mean']:.3g}/{w['max']:g}, "
            f"{w['share_not_1']:.1%} of them not 1."
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unsupervised_rows"] = {str(k): v for k, v in self.unsupervised_rows.items()}
        data["stop_truncated_rows"] = {str(k): v for k, v in self.stop_truncated_rows.items()}
        if not self.more_verdicts:  # the report's JSON as before verdicts could be added
            del data["more_verdicts"]
        return data

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def build_report(
    dataset,
    *,
    dataset_name: str,
    max_length: int | None,
    policies: dict[str, str] | None = None,
    kept_defaults: tuple = (),
) -> tuple[AuditReport, list[RowVerdict]]:
    """Build the report and the row verdicts (`policies.VERDICTS`, in order) from a dataset carrying the pre-flight
    columns.

    `dataset` is what the trainer's pre-flight pass produces (truncated `input_ids`/`labels` plus the per-row
    columns named in `AUDIT_COLUMNS`); `audit_dataset` audits raw rows. `policies` maps each verdict's policy field
    to the policy in force (the verdict's default when absent).
    """
    counts, full_counts = dataset[COUNT], dataset[FULL_COUNT]
    verdicts = find_verdicts(
        dataset,
        dataset_name=dataset_name,
        max_length=max_length,
        ignore_index=IGNORE_INDEX,
        kept_defaults=kept_defaults,
    )
    masked = verdicts[0].rows
    lengths = dataset[LENGTH]
    every = list(counts) or [0]  # every row, fully masked ones as 0: the rows the audit page's histogram shows
    report = AuditReport(
        dataset_name=dataset_name,
        rows=len(counts),
        max_length=max_length,
        rows_fully_masked=len(masked),
        rows_completion_truncated=sum(1 for c, f in zip(counts, full_counts, strict=True) if 0 < c < f),
        rows_stop_token_not_supervised=sum(1 for i, ok in enumerate(dataset[STOP_OK]) if not ok and i not in masked),
        supervised_tokens_min=min(every),
        supervised_tokens_median=statistics.median(every),
        supervised_tokens_max=max(every),
        supervised_token_share=sum(counts) / max(1, sum(lengths)),
    )
    report.rows_merged_boundary = sum(1 for merged in dataset.get(MERGED, []) if merged)
    for verdict in verdicts:
        report.fill(verdict, (policies or {}).get(verdict.policy_field, verdict.default))
    report.rows_merged_header = sum(1 for merged in dataset.get(MERGED_HEADER, []) if merged)
    return report, verdicts


def save_audits(reports: dict[str, AuditReport], path: str | Path) -> Path:
    """Write the reports of several datasets (`{"train": ..., "eval": ...}`) as one JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: report.to_dict() for name, report in reports.items()}, indent=2) + "\n")
    return path
