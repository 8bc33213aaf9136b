"""The pre-flight audit report: what a prepared dataset will train on, row by row, summed up."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TruncatedCompletionError
from .validation import RowAudit, audit_labels

__all__ = ["AUDIT_COLUMNS", "AuditReport", "StopTruncation", "build_report", "save_audits"]

# Per-row columns the trainer's pre-flight pass adds to a prepared dataset (removed before training).
FULL_COUNT, FULL_FIRST, REASON = "_msft_full_count", "_msft_full_first", "_msft_reason"
COUNT, STOP_OK, LENGTH = "_msft_count", "_msft_stop_ok", "_msft_length"
#: the row's length before truncation; whether truncation cut the completion before its (trained) stop token
FULL_LENGTH, STOP_CUT = "_msft_full_length", "_msft_stop_cut"
#: trained chat turns whose first reply token merged with the header (that token left untrained)
MERGED_HEADER = "_msft_merged_header"
AUDIT_COLUMNS = [FULL_COUNT, FULL_FIRST, REASON, COUNT, STOP_OK, LENGTH, FULL_LENGTH, STOP_CUT, MERGED_HEADER]


@dataclass
class StopTruncation:
    """The rows whose completion truncation at `max_length` cut before its stop token, and
    `truncated_completion_policy`'s verdict on them."""

    dataset_name: str
    num_rows: int
    max_length: int | None
    #: dataset index -> (tokens before truncation, completion tokens kept, completion tokens in full)
    rows: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    #: `(field, our default, SFTConfig's default)` of the kept MaskedSFTConfig defaults (see `options.kept_defaults`)
    kept_defaults: tuple = ()

    @property
    def share(self) -> float:
        return len(self.rows) / self.num_rows if self.num_rows else 0.0

    @staticmethod
    def line(index: int, lengths: tuple[int, int, int], max_length: int | None) -> str:
        full, kept, total = lengths
        return f"row {index}: {full} tokens cut at max_length {max_length}, {kept} of {total} completion tokens kept"

    def describe(self, limit: int = 5) -> str:
        lines = [
            f"{len(self.rows)} of {self.num_rows} rows ({self.share:.1%}) of the {self.dataset_name} dataset lose "
            "their stop token to truncation: their completion is cut before its eos/end-of-turn token, so the model "
            "is never shown where those answers end."
        ]
        lines += [f"  {self.line(i, self.rows[i], self.max_length)}" for i in list(self.rows)[:limit]]
        if len(self.rows) > limit:
            lines.append(f"  ... and {len(self.rows) - limit} more")
        return "\n".join(lines)

    def fix(self) -> str:
        longest = max(full for full, _, _ in self.rows.values())
        note = ""
        ours = {name: (mine, theirs) for name, mine, theirs in self.kept_defaults}
        if "max_length" in ours:
            note = (
                f" (`max_length={ours['max_length'][0]}` is MaskedSFTConfig's default (SFTConfig's is "
                f"{ours['max_length'][1]}), not a value you set)"
            )
        return (
            f"Fix: raise `max_length` (now {self.max_length}){note} to {longest} or more, the longest of these rows; "
            "or shorten the answers; or set `truncated_completion_policy='drop'` to drop such rows knowingly."
        )

    def enforce(self, policy: str, max_fraction: float) -> set[int]:
        """Apply `policy`: the dataset indices to drop (`"drop"`); raises `TruncatedCompletionError` for `"error"`
        or past `max_fraction`. `"warn"` keeps the rows: the caller warns with `describe()` and `fix()`."""
        if not self.rows:
            return set()
        if policy == "error":
            raise TruncatedCompletionError(
                f"{self.describe()}\nWith `truncated_completion_policy='error'` training stops here. {self.fix()}"
            )
        if self.share > max_fraction:
            raise TruncatedCompletionError(
                f"{self.describe()}\nThat is more than `max_truncated_completion_fraction` ({max_fraction:.1%}) "
                f"allows with `truncated_completion_policy={policy!r}`: a model trained on it would not learn to "
                f"stop. {self.fix()}"
            )
        return set(self.rows) if policy == "drop" else set()


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
            f"cut by max_length); supervised tokens per row (all {self.rows} rows, {self.rows_fully_masked} with none) "
            f"min/median/max {self.supervised_tokens_min}/{self.supervised_tokens_median:g}/"
            f"{self.supervised_tokens_max}, {self.supervised_token_share:.1%} of all tokens."
            + (
                f" {self.rows_merged_header} rows with a reply whose first token merged with the header (not trained)."
                if self.rows_merged_header
                else ""
            )
            + (f" Stop set: {self.stop_set}." if self.stop_set else "")
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unsupervised_rows"] = {str(k): v for k, v in self.unsupervised_rows.items()}
        data["stop_truncated_rows"] = {str(k): v for k, v in self.stop_truncated_rows.items()}
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
    policy: str = "error",
    stop_policy: str = "warn",
    kept_defaults: tuple = (),
) -> tuple[AuditReport, RowAudit, StopTruncation]:
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
        truncated_completion_policy=stop_policy,
    )
    cut = {
        i: (full, count, full_count)
        for i, (is_cut, full, count, full_count) in enumerate(
            zip(dataset.get(STOP_CUT, []), dataset.get(FULL_LENGTH, []), counts, full_counts, strict=False)
        )
        if is_cut and i not in verdict.unsupervised
    }
    stops = StopTruncation(dataset_name, len(counts), max_length, cut, kept_defaults)
    report.rows_stop_token_truncated = len(cut)
    report.rows_merged_header = sum(1 for merged in dataset.get(MERGED_HEADER, []) if merged)
    report.stop_truncated_rows = {i: stops.line(i, cut[i], max_length) for i in list(cut)[:50]}
    return report, verdict, stops


def save_audits(reports: dict[str, AuditReport], path: str | Path) -> Path:
    """Write the reports of several datasets (`{"train": ..., "eval": ...}`) as one JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: report.to_dict() for name, report in reports.items()}, indent=2) + "\n")
    return path
