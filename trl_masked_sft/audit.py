"""What a dataset will train on, before any model is loaded: `prepare_dataset` and `audit_dataset`.

Both run the trainer's own preparation (`PreparationPipeline`) on the raw rows, so the numbers are the ones
`MaskedSFTTrainer` would act on.
"""

from __future__ import annotations

from datasets import Dataset, IterableDataset

from .batch_checks import RowAudit
from .hints import Collator, Config, Rows, Tokenizer
from .pipeline import PreparationPipeline
from .report import AuditReport

__all__ = ["audit_dataset", "prepare_dataset"]


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
