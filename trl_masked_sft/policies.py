"""The row verdicts of the pre-flight pass: which rows a policy judges, what it says about them, what it does.

Each verdict is one class with one interface: `find` (its rows, from the per-row audit columns), `share`,
`describe`, `fix`, `enforce` (the policy applied), the sentences the streaming path and the log use, and the
`AuditReport` fields it fills. The pipeline, the streaming path, the report and the audit page loop over `VERDICTS`;
a row gets at most one verdict, the first in that order. Adding a policy is one class here (appended to `VERDICTS`)
and one config field (see docs/policies.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import TruncatedCompletionError, UnsupervisedRowsError

__all__ = [
    "AUDIT_COLUMNS",
    "POLICY_CHOICES",
    "VERDICTS",
    "CutStopToken",
    "FullyMasked",
    "RowVerdict",
    "find_verdicts",
]

#: What every row policy may do with the rows it judges.
POLICY_CHOICES = ("error", "drop", "warn")

# Per-row columns the pre-flight pass adds to a prepared dataset (removed before training).
FULL_COUNT, FULL_FIRST, REASON = "_msft_full_count", "_msft_full_first", "_msft_reason"
COUNT, STOP_OK, LENGTH = "_msft_count", "_msft_stop_ok", "_msft_length"
#: the row's length before truncation; whether truncation cut the completion before its (trained) stop token
FULL_LENGTH, STOP_CUT = "_msft_full_length", "_msft_stop_cut"
#: whether the row's prompt and completion, tokenized together, would merge across their boundary (`text_rows`)
MERGED = "_msft_merged"
#: trained chat turns whose first reply token merged with the header (that token left untrained)
MERGED_HEADER = "_msft_merged_header"
AUDIT_COLUMNS = [FULL_COUNT, FULL_FIRST, REASON, COUNT, STOP_OK, LENGTH, FULL_LENGTH, STOP_CUT, MERGED, MERGED_HEADER]


@dataclass
class RowVerdict:
    """The rows one policy judges in one dataset (`rows`: dataset index -> what is wrong with that row).

    A subclass names its config fields (`field`, `fraction_field`, with their defaults), its error class, and the
    sentences that differ between policies; `find` picks its rows from the audit columns.
    """

    #: the config field holding the policy, the one holding the largest share `drop`/`warn` accept, their defaults
    policy_field: ClassVar[str]
    fraction_field: ClassVar[str]
    default: ClassVar[str]
    default_fraction: ClassVar[float]
    error: ClassVar[type[Exception]]
    #: how the config's range error describes the share: "lets <this> up to 10% of the rows"
    fraction_says: ClassVar[str]
    #: whether `warn` keeps the rows (trained as they are) or drops them like `drop`
    warn_keeps: ClassVar[bool]
    #: after "With `<field>='error'`": what happens
    on_error: ClassVar[str] = " training stops here"
    #: the `AuditReport` fields for the number of rows, the first rows' details and the policy; `None`: the report
    #: keeps them under `more_verdicts[field]`
    report_fields: ClassVar[tuple[str, str, str] | None] = None
    #: the audit page's section: its heading (with an optional paragraph of HTML) and the detail column's name
    page_title: ClassVar[str]
    page_note: ClassVar[str] = ""
    detail_header: ClassVar[str] = "why"

    dataset_name: str
    num_rows: int
    max_length: int | None
    rows: dict[int, Any] = field(default_factory=dict)
    #: `(field, our default, SFTConfig's default)` of the kept MaskedSFTConfig defaults (see `options.kept_defaults`)
    kept_defaults: tuple = ()

    @classmethod
    def find(
        cls, columns: Mapping[str, Sequence], *, taken: set[int], ignore_index: int, max_length: int | None
    ) -> dict[int, Any]:
        """This verdict's rows among the audit columns (`AUDIT_COLUMNS`, one list each), skipping rows `taken`."""
        raise NotImplementedError

    @property
    def share(self) -> float:
        return len(self.rows) / self.num_rows if self.num_rows else 0.0

    def line(self, index: int) -> str:
        """What is wrong with row `index`, in a few words."""
        return str(self.rows[index])

    def detail(self, index: int) -> str:
        """What the report and the audit page show for row `index`."""
        return self.line(index)

    def headline(self) -> str:
        """The first line of `describe`: how many rows, and what is wrong with them."""
        raise NotImplementedError

    def describe(self, limit: int = 5) -> str:
        """How many rows, which (the first `limit`), and why."""
        lines = [self.headline()] + [f"  {self.row_line(i)}" for i in list(self.rows)[:limit]]
        if len(self.rows) > limit:
            lines.append(f"  ... and {len(self.rows) - limit} more")
        return "\n".join(lines)

    def row_line(self, index: int) -> str:
        return f"row {index}: {self.line(index)}"

    def fix(self) -> str:
        raise NotImplementedError

    def drops(self, policy: str) -> bool:
        return policy == "drop" or (policy == "warn" and not self.warn_keeps)

    def too_many(self, policy: str, max_fraction: float) -> str:
        """The error's tail when `drop`/`warn` would take more than `max_fraction` of the rows."""
        fraction, name = self.fraction_field, self.policy_field
        return f"That is more than `{fraction}` ({max_fraction:.1%}) allows with `{name}={policy!r}`"

    def enforce(self, policy: str, max_fraction: float) -> set[int]:
        """Apply `policy`: the dataset indices to drop (empty when nothing is wrong or the rows are kept). Raises
        `error` for `"error"`, when every row would be dropped, or past `max_fraction`. The caller says what
        happened (`outcome`)."""
        if not self.rows:
            return set()
        if policy == "error":
            raise self.error(f"{self.describe()}\nWith `{self.policy_field}='error'`{self.on_error}. {self.fix()}")
        if self.drops(policy) and len(self.rows) == self.num_rows:
            raise self.error(
                f"{self.describe()}\nEvery row would be dropped (`{self.policy_field}={policy!r}`), leaving nothing "
                f"to train on. {self.fix()}"
            )
        if self.share > max_fraction:
            raise self.error(f"{self.describe()}\n{self.too_many(policy, max_fraction)}")
        return set(self.rows) if self.drops(policy) else set()

    def outcome(self, policy: str, dropped: bool) -> str | None:
        """What the log says after `enforce` (`None`: nothing to say)."""
        if not dropped:
            return None
        return f"{self.describe()}\nDropped them (`{self.policy_field}={policy!r}`). {self.fix()}"

    # The streaming path: one row at a time, `where` = "row 7 of the streamed train dataset".

    def streamed_is(self, index: int) -> str:
        """What is wrong with streamed row `index`, after its name: "has no supervised token: ..."."""
        return f"is judged by `{self.policy_field}` ({self.line(index)})"

    #: what the rows judged so far were, after "3 of the first 12 rows of the streamed train dataset"
    streamed_were: ClassVar[str] = "were judged"

    def latest(self, where: str, index: int) -> str:
        return f"{where}, {self.line(index)}"

    def streamed_error(self, where: str, index: int) -> str:
        return (
            f"{_capital(where)} {self.streamed_is(index)}. With `{self.policy_field}='error'`{self.on_error}. "
            f"{self.fix()}"
        )

    def streamed_many(self, count: int, read: int, where: str, index: int, policy: str, max_fraction: float) -> str:
        return (
            f"{count} of the first {read} rows of the streamed {self.dataset_name} dataset {self.streamed_were} "
            f"(latest: {self.latest(where, index)}): more than `{self.fraction_field}` ({max_fraction:.1%}) allows "
            f"with `{self.policy_field}={policy!r}`. {self.fix()}"
        )

    def streamed_warning(self, where: str, index: int, max_fraction: float) -> str:
        done = "Kept" if self.warn_keeps else "Dropped"
        return (
            f"{done} {where}: {self.line(index)}. Later rows like it are {done.lower()} without a warning while they "
            f"stay within `{self.fraction_field}` ({max_fraction:.1%}). {self.fix()}"
        )


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


@dataclass
class FullyMasked(RowVerdict):
    """Rows with no supervised token (`masked_row_policy`): a truncated prompt, an empty completion, a template not
    found, labels all masked, chat turns not located."""

    policy_field, fraction_field = "masked_row_policy", "max_masked_row_fraction"
    default, default_fraction = "error", 0.1
    error = UnsupervisedRowsError
    fraction_says = "`masked_row_policy='drop'` drop"
    warn_keeps = False
    on_error = " (the default) training stops here instead of training on nothing"
    report_fields = ("rows_fully_masked", "unsupervised_rows", "policy")
    page_title = "Rows with no supervised token"

    #: dataset index -> decoded end of the prompt, for the message
    prompt_tails: dict[int, str] = field(default_factory=dict)

    @property
    def unsupervised(self) -> dict[int, str]:
        """Dataset index -> why the row has no supervised token (the same as `rows`)."""
        return self.rows

    @classmethod
    def find(cls, columns, *, taken, ignore_index, max_length):
        full_supervised, full_first = columns[FULL_COUNT], columns[FULL_FIRST]
        rows: dict[int, str] = {}
        for index, (count, reason) in enumerate(zip(columns[COUNT], columns[REASON], strict=True)):
            if index in taken:
                continue
            if reason:
                rows[index] = reason
            elif count == 0:
                if full_supervised[index] > 0:
                    rows[index] = f"prompt of {full_first[index]} tokens truncated at max_length {max_length}"
                else:
                    rows[index] = f"labels are all {ignore_index} (no completion token)"
        return rows

    def headline(self) -> str:
        counts: dict[str, int] = {}
        for reason in self.rows.values():
            kind = "prompt truncated at max_length" if reason.startswith("prompt of") else reason
            counts[kind] = counts.get(kind, 0) + 1
        return (
            f"{len(self.rows)} of {self.num_rows} rows ({self.share:.1%}) of the {self.dataset_name} "
            "dataset have no supervised token: "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            + "."
        )

    def row_line(self, index: int) -> str:
        return f"row {index}: {self.rows[index]}; prompt ends {self.prompt_tails.get(index, '')!r}"

    def fix(self) -> str:
        reasons = " ".join(self.rows.values())
        fixes = []
        if "truncated at max_length" in reasons:
            fixes.append(
                f"raise `max_length` (now {self.max_length}) above the longest prompt plus a few answer tokens, or "
                "shorten those prompts"
            )
        if "empty completion" in reasons:
            fixes.append("fill in or remove the rows with an empty completion")
        if "template not found" in reasons or "follows `response_template`" in reasons:
            fixes.append("make `response_template` match the data exactly (spaces and newlines count)")
        if "labels are all" in reasons:
            fixes.append("check how the `labels` column was built: those rows mask every token")
        if "chat turns not located" in reasons:
            fixes.append(
                "follow the fix each row's reason names (e.g. pass a `chat_template` with `{% generation %}` markers)"
            )
        drop = "set `masked_row_policy='drop'` (with `max_masked_row_fraction`) to drop such rows knowingly"
        fixes.append(f"or {drop}" if fixes else drop)
        return "Fix: " + "; ".join(fixes) + "."

    def too_many(self, policy: str, max_fraction: float) -> str:
        return f"{super().too_many(policy, max_fraction)}. {self.fix()} (or raise `{self.fraction_field}`)."

    streamed_were = "had no supervised token"

    def streamed_is(self, index: int) -> str:
        return f"has no supervised token: {self.rows[index]}"

    def streamed_warning(self, where: str, index: int, max_fraction: float) -> str:
        return (
            f"Dropped {where}: no supervised token ({self.rows[index]}). Later rows like it are dropped without a "
            f"warning while they stay within `{self.fraction_field}` ({max_fraction:.1%}). {self.fix()}"
        )


@dataclass
class CutStopToken(RowVerdict):
    """Rows whose completion truncation at `max_length` cut before its stop token (`truncated_completion_policy`):
    the model would never be shown where those answers end. Details: `(tokens before truncation, completion tokens
    kept, completion tokens in full)`."""

    policy_field, fraction_field = "truncated_completion_policy", "max_truncated_completion_fraction"
    default, default_fraction = "warn", 0.5
    error = TruncatedCompletionError
    fraction_says = "`truncated_completion_policy='warn'` accept"
    warn_keeps = True
    report_fields = ("rows_stop_token_truncated", "stop_truncated_rows", "truncated_completion_policy")
    page_title = "Rows whose completion is cut before its stop token"
    page_note = "<p>The model is never shown where these answers end. Fix: raise <code>max_length</code>.</p>"
    detail_header = "lengths"

    @classmethod
    def find(cls, columns, *, taken, ignore_index, max_length):
        return {
            i: (full, count, full_count)
            for i, (is_cut, full, count, full_count) in enumerate(
                zip(
                    columns.get(STOP_CUT, []),
                    columns.get(FULL_LENGTH, []),
                    columns[COUNT],
                    columns[FULL_COUNT],
                    strict=False,
                )
            )
            if is_cut and i not in taken
        }

    def line(self, index: int) -> str:
        full, kept, total = self.rows[index]
        return f"{full} tokens cut at max_length {self.max_length}, {kept} of {total} completion tokens kept"

    def detail(self, index: int) -> str:
        return self.row_line(index)

    def headline(self) -> str:
        return (
            f"{len(self.rows)} of {self.num_rows} rows ({self.share:.1%}) of the {self.dataset_name} dataset lose "
            "their stop token to truncation: their completion is cut before its eos/end-of-turn token, so the model "
            "is never shown where those answers end."
        )

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

    def too_many(self, policy: str, max_fraction: float) -> str:
        return f"{super().too_many(policy, max_fraction)}: a model trained on it would not learn to stop. {self.fix()}"

    def outcome(self, policy: str, dropped: bool) -> str | None:
        if not self.rows:
            return None
        done = "dropped them" if dropped else "trained as cut"
        return f"{self.describe()}\n`{self.policy_field}={policy!r}`: {done}. {self.fix()}"

    streamed_were = "lost their stop token to truncation"

    def streamed_is(self, index: int) -> str:
        return f"loses its stop token to truncation ({self.row_line(index)})"

    def latest(self, where: str, index: int) -> str:
        return self.row_line(index)

    def streamed_warning(self, where: str, index: int, max_fraction: float) -> str:
        return (
            f"The completion of {where} is cut before its stop token ({self.row_line(index)}); it is trained as cut, "
            f"and later rows like it without a warning while they stay within `{self.fraction_field}` "
            f"({max_fraction:.1%}). {self.fix()}"
        )


#: The row verdicts, in the order they judge a row (a row gets the first that applies) and enforce.
VERDICTS: tuple[type[RowVerdict], ...] = (FullyMasked, CutStopToken)


def find_verdicts(
    columns: Mapping[str, Sequence],
    *,
    dataset_name: str,
    max_length: int | None,
    ignore_index: int,
    kept_defaults: tuple = (),
) -> list[RowVerdict]:
    """Every verdict of `VERDICTS` on the rows of `columns` (the audit columns, one list each), each row judged by
    the first verdict that applies."""
    taken: set[int] = set()
    found = []
    num_rows = len(columns[COUNT])
    for kind in VERDICTS:
        rows = kind.find(columns, taken=taken, ignore_index=ignore_index, max_length=max_length)
        taken |= set(rows)
        found.append(kind(dataset_name, num_rows, max_length, rows, kept_defaults))
    return found
