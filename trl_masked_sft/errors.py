"""The exceptions and the warning class of `trl_masked_sft`.

Every error about the inputs (data, config, model, checkpoint) is a `ValueError` or `TypeError` subclass, so code
that already catches those keeps working; `TrainingHealthError`, raised when a training step goes wrong, is a
`RuntimeError`. Each message says what was given, the value seen, and the fix.
"""

from __future__ import annotations

__all__ = [
    "AllMaskedBatchError",
    "CheckpointError",
    "DatasetFormatError",
    "DatasetTypeError",
    "LabelsOverwrittenError",
    "MaskedSFTWarning",
    "ModelSetupError",
    "TemplateNotFoundError",
    "TrainingHealthError",
    "UnsupervisedRowsError",
]


class MaskedSFTWarning(UserWarning):
    """Warnings about likely masking mistakes; filter them with `warnings.filterwarnings(..., MaskedSFTWarning)`."""


class AllMaskedBatchError(ValueError):
    """A batch reached the model with no supervised label after the causal shift: it would train on nothing."""


class UnsupervisedRowsError(ValueError):
    """The pre-flight pass found rows with no supervised token and `masked_row_policy` does not allow them."""


class TemplateNotFoundError(ValueError):
    """A response template was not found in a row, so nothing in that row could be supervised."""


class DatasetFormatError(ValueError):
    """A dataset is missing a column, or a row's values do not fit together (e.g. labels vs input_ids length)."""


class DatasetTypeError(TypeError):
    """A dataset value has the wrong type (e.g. `None` or a dict where a string is expected)."""


class LabelsOverwrittenError(ValueError):
    """The data collator supervises tokens that the prepared dataset masks (it overwrote the labels)."""


class ModelSetupError(ValueError):
    """The model can't learn as set up: no trainable parameter, frozen adapters, or no gradient reaching them."""


class TrainingHealthError(RuntimeError):
    """A training step went wrong (non-finite loss or gradient norm, no supervised token); it was not applied."""


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing or incomplete (e.g. the run was killed while saving it)."""
