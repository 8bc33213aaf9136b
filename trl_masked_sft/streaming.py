"""The pre-flight policies on a streamed dataset, which can't be counted up front: rows are checked as they are read.

`masked_row_policy`: `error` raises at the first row with no supervised token; `drop`/`warn` drop it (`warn` names
the first one in a warning) and raise once more than `max_masked_row_fraction` of the rows read so far (at least 10)
went. `truncated_completion_policy` on rows whose stop token truncation cut: `error` raises at the first; `warn`
keeps them and `drop` drops them (`warn` names the first in a warning), and both raise once more than
`max_truncated_completion_fraction` of the rows read so far (at least 10) were cut.
"""

from __future__ import annotations

import warnings

from datasets import IterableDataset

from .errors import MaskedSFTWarning, TruncatedCompletionError, UnsupervisedRowsError
from .options import MaskingOptions
from .report import AUDIT_COLUMNS, COUNT, FULL_COUNT, FULL_FIRST, FULL_LENGTH, REASON, STOP_CUT, StopTruncation
from .validation import audit_labels

__all__ = ["check_stream"]


def check_stream(dataset: IterableDataset, options: MaskingOptions, dataset_name: str, enforce: bool):
    """`dataset` (carrying the pre-flight columns) filtered by the policies as it is read; without `enforce`,
    every row is kept."""
    policy, max_fraction = options.masked_row_policy, options.max_masked_row_fraction
    stop_policy, max_cut = options.truncated_completion_policy, options.max_truncated_completion_fraction
    seen = {"rows": 0, "dropped": 0, "cut": 0}

    def check_cut(example, index) -> bool:
        where = f"row {index} of the streamed {dataset_name} dataset"
        lengths = (example[FULL_LENGTH], example[COUNT], example[FULL_COUNT])
        stops = StopTruncation(dataset_name, 1, options.max_length, {index: lengths}, options.inherited_defaults)
        line, fix = stops.line(index, lengths, options.max_length), stops.fix()
        seen["cut"] += 1
        if stop_policy == "error":
            raise TruncatedCompletionError(
                f"{where[0].upper()}{where[1:]} loses its stop token to truncation ({line}). With "
                f"`truncated_completion_policy='error'` training stops here. {fix}"
            )
        if seen["rows"] >= 10 and seen["cut"] > max_cut * seen["rows"]:
            raise TruncatedCompletionError(
                f"{seen['cut']} of the first {seen['rows']} rows of the streamed {dataset_name} dataset lost their "
                f"stop token to truncation (latest: {line}): more than `max_truncated_completion_fraction` "
                f"({max_cut:.1%}) allows with `truncated_completion_policy={stop_policy!r}`. {fix}"
            )
        if stop_policy == "warn" and seen["cut"] == 1:
            warnings.warn(
                f"The completion of {where} is cut before its stop token ({line}); it is trained as cut, and later "
                f"rows like it without a warning while they stay within `max_truncated_completion_fraction` "
                f"({max_cut:.1%}). {fix}",
                MaskedSFTWarning,
                stacklevel=2,
            )
        return stop_policy != "drop"

    def check(example, index):
        seen["rows"] += 1
        if not enforce:
            return True
        if not example[REASON] and example[COUNT] > 0:
            return check_cut(example, index) if example[STOP_CUT] else True
        row_audit = audit_labels(
            supervised_counts=[example[COUNT]],
            full_supervised=[example[FULL_COUNT]],
            full_first=[example[FULL_FIRST]],
            dataset_name=dataset_name,
            max_length=options.max_length,
            preset_reasons={0: example[REASON]} if example[REASON] else None,
        )
        reason, fix = row_audit.unsupervised[0], row_audit.fix()
        where = f"row {index} of the streamed {dataset_name} dataset"
        if policy == "error":
            raise UnsupervisedRowsError(
                f"{where[0].upper()}{where[1:]} has no supervised token: {reason}. With "
                f"`masked_row_policy='error'` (the default) training stops here instead of training on nothing. "
                f"{fix}"
            )
        seen["dropped"] += 1
        if policy == "warn" and seen["dropped"] == 1:
            warnings.warn(
                f"Dropped {where}: no supervised token ({reason}). Later rows like it are dropped without a "
                f"warning while they stay within `max_masked_row_fraction` ({max_fraction:.1%}). {fix}",
                MaskedSFTWarning,
                stacklevel=2,
            )
        if seen["rows"] >= 10 and seen["dropped"] > max_fraction * seen["rows"]:
            raise UnsupervisedRowsError(
                f"{seen['dropped']} of the first {seen['rows']} rows of the streamed {dataset_name} dataset had no "
                f"supervised token (latest: {where}, {reason}): more than `max_masked_row_fraction` "
                f"({max_fraction:.1%}) allows with `masked_row_policy={policy!r}`. {fix}"
            )
        return False

    return dataset.filter(check, with_indices=True).remove_columns(AUDIT_COLUMNS)
