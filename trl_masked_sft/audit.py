"""What a dataset will train on, before any model is loaded: `prepare_dataset` and `audit_dataset`.

Both run the trainer's own preparation (`PreparationPipeline`) on the raw rows, so the numbers are the ones
`MaskedSFTTrainer` would act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from datasets import Dataset, IterableDataset

from .hints import Collator, Config, Rows, Tokenizer
from .masking import IGNORE_INDEX, count_supervised
from .pipeline import PreparationPipeline
from .policies import COUNT, FULL_COUNT, FULL_FIRST, REASON, FullyMasked
from .report import AuditReport

__all__ = ["RowAudit", "audit_dataset", "audit_labels", "prepare_dataset"]

#: The verdict on rows with no supervised token, under its former name (see `policies.FullyMasked`).
RowAudit = FullyMasked


def audit_labels(
    labels_column: Sequence[Sequence[int]] | None = None,
    *,
    supervised_counts: Sequence[int] | None = None,
    full_supervised: Sequence[int],
    full_first: Sequence[int | None],
    dataset_name: str,
    max_length: int | None,
    preset_reasons: Mapping[int, str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> FullyMasked:
    """Find rows of a prepared (truncated) labels column with no supervised token and say why.

    `full_supervised` / `full_first` are each row's supervised count and first supervised position *before*
    truncation, which tells a truncated prompt from a row that never had an answer. `preset_reasons` names rows
    already known to be bad (empty completion, template not found). Pass `supervised_counts` instead of
    `labels_column` when the per-row counts are already known.
    """
    if supervised_counts is None:
        supervised_counts = [count_supervised(labels, ignore_index) for labels in labels_column]
    preset_reasons = preset_reasons or {}
    columns = {
        COUNT: supervised_counts,
        FULL_COUNT: full_supervised,
        FULL_FIRST: full_first,
        REASON: [preset_reasons.get(i, "") for i in range(len(supervised_counts))],
    }
    rows = FullyMasked.find(columns, taken=set(), ignore_index=ignore_index, max_length=max_length)
    return FullyMasked(dataset_name, len(supervised_counts), max_length, rows)


def prepare_dataset(
    dataset: Rows,
    tokenizer: Tokenizer,
    config: Config = None,
    *,
    data_collator: Collator | None = None,
    dataset_name: str = "train",
) -> tuple[Dataset | IterableDataset, AuditReport, RowAudit]:
    """Prepare raw rows exactly as `MaskedSFTTrainer` would, without a model and without enforcing the policy.

    Returns `(prepared dataset, AuditReport, RowAudit)`. `config` is a `MaskedSFTConfig` or `SFTConfig` (defaults
    when `None`); it is read, never changed.
    """
    pipeline = PreparationPipeline.from_config(tokenizer, config, data_collator=data_collator)
    prepared = pipeline.prepare(dataset, dataset_name, enforce=False)
    return prepared.dataset, prepared.report, prepared.verdict


def audit_dataset(
    dataset: Rows,
    tokenizer: Tokenizer,
    config: Config = None,
    *,
    data_collator: Collator | None = None,
    dataset_name: str = "train",
) -> AuditReport:
    """The pre-flight audit of raw rows, as `MaskedSFTTrainer` runs it before training, as a report.

    `report.policy_error` holds the error `masked_row_policy` would raise (`None` when training may start).
    """
    return prepare_dataset(dataset, tokenizer, config, data_collator=data_collator, dataset_name=dataset_name)[1]
