"""The pre-flight policies on a streamed dataset, which can't be counted up front: rows are checked as they are read.

Each row gets the first verdict of `policies.VERDICTS` that applies (no supervised token: `masked_row_policy`; stop
token cut by truncation: `truncated_completion_policy`). `error` raises at the first such row. `drop` drops it;
`warn` drops it too (`masked_row_policy`) or keeps it (`truncated_completion_policy`), and names the first one in a
warning. `drop` and `warn` raise once more than the policy's largest share (`max_masked_row_fraction`,
`max_truncated_completion_fraction`) of the rows read so far (at least 10) were judged.
"""

from __future__ import annotations

import warnings

from datasets import IterableDataset

from .errors import MaskedSFTWarning
from .masking import IGNORE_INDEX
from .options import MaskingOptions
from .policies import AUDIT_COLUMNS, find_verdicts

__all__ = ["check_stream"]


def check_stream(dataset: IterableDataset, options: MaskingOptions, dataset_name: str, enforce: bool):
    """`(dataset, counts)`: `dataset` (carrying the pre-flight columns) filtered by the policies as it is read,
    without `enforce` every row kept; `counts` (`rows` read, `kept`) grows as it is read."""
    seen = {"rows": 0, "kept": 0}

    def check(example, index):
        seen["rows"] += 1
        if not enforce:
            seen["kept"] += 1
            return True
        columns = {name: [example[name]] for name in AUDIT_COLUMNS if name in example}
        for verdict in find_verdicts(
            columns,
            dataset_name=dataset_name,
            max_length=options.max_length,
            ignore_index=IGNORE_INDEX,
            kept_defaults=options.inherited_defaults,
        ):
            if verdict.rows:
                verdict.rows = {index: verdict.rows[0]}
                keep = _judge(verdict, index, options, seen)
                seen["kept"] += keep
                return keep
        seen["kept"] += 1
        return True

    return dataset.filter(check, with_indices=True).remove_columns(AUDIT_COLUMNS), seen


def _judge(verdict, index: int, options: MaskingOptions, seen: dict[str, int]) -> bool:
    """Apply `verdict`'s policy to streamed row `index`: raise, or whether to keep the row (warning at the first)."""
    policy, max_fraction = options.policy_of(verdict)
    where = f"row {index} of the streamed {verdict.dataset_name} dataset"
    if policy == "error":
        raise verdict.error(verdict.streamed_error(where, index))
    judged = seen[verdict.policy_field] = seen.get(verdict.policy_field, 0) + 1
    if policy == "warn" and judged == 1:
        warnings.warn(verdict.streamed_warning(where, index, max_fraction), MaskedSFTWarning, stacklevel=3)
    if seen["rows"] >= 10 and judged > max_fraction * seen["rows"]:
        raise verdict.error(verdict.streamed_many(judged, seen["rows"], where, index, policy, max_fraction))
    return not verdict.drops(policy)
