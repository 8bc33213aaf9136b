"""The exceptions and the warning class of `trl_masked_sft`.

Every error about the inputs (data, config, model, checkpoint, a file named on the command line) is a `ValueError`
or `TypeError` subclass, so code that already catches those keeps working; `TrainingHealthError`, raised when a
training step goes wrong, is a `RuntimeError`. All of them are `MaskedSFTError`s, so one `except MaskedSFTError`
catches what this package refuses. Each message says what was given, the value seen, and the fix; when a library
failed underneath, its exception is the `__cause__`.
"""

from __future__ import annotations

__all__ = [
    "AllMaskedBatchError",
    "CheckpointError",
    "ConfigError",
    "DataSourceError",
    "DatasetFormatError",
    "DatasetTypeError",
    "LabelsOverwrittenError",
    "MaskedSFTError",
    "MaskedSFTWarning",
    "ModelSetupError",
    "TemplateNotFoundError",
    "TrainingHealthError",
    "TruncatedCompletionError",
    "UnsupervisedRowsError",
]


class MaskedSFTWarning(UserWarning):
    """Warnings about likely masking mistakes; filter them with `warnings.filterwarnings(..., MaskedSFTWarning)`."""


class MaskedSFTError(Exception):
    """The base of every error this package raises about its inputs or a training step."""


class AllMaskedBatchError(MaskedSFTError, ValueError):
    """A batch reached the model with no supervised label after the causal shift: it would train on nothing."""


class UnsupervisedRowsError(MaskedSFTError, ValueError):
    """The pre-flight pass found rows with no supervised token and `masked_row_policy` does not allow them."""


class TruncatedCompletionError(MaskedSFTError, ValueError):
    """Truncation at `max_length` cuts completions before their stop token and `truncated_completion_policy` does
    not allow it: a model trained on them never learns to stop."""


class TemplateNotFoundError(MaskedSFTError, ValueError):
    """A response template was not found in a row, so nothing in that row could be supervised."""


class DatasetFormatError(MaskedSFTError, ValueError):
    """A dataset is missing a column, or a row's values do not fit together (e.g. labels vs input_ids length)."""


class DatasetTypeError(MaskedSFTError, TypeError):
    """A dataset value has the wrong type (e.g. `None` or a dict where a string is expected)."""


class LabelsOverwrittenError(MaskedSFTError, ValueError):
    """The data collator supervises tokens that the prepared dataset masks (it overwrote the labels)."""


class ModelSetupError(MaskedSFTError, ValueError):
    """The model can't learn as set up: no trainable parameter, frozen adapters, or no gradient reaching them."""


class TrainingHealthError(MaskedSFTError, RuntimeError):
    """A training step went wrong (non-finite loss or gradient norm, no supervised token); it was not applied."""


class CheckpointError(MaskedSFTError, ValueError):
    """A checkpoint to resume from is missing, incomplete (e.g. the run was killed while saving it) or corrupt."""


class ConfigError(MaskedSFTError, ValueError):
    """A config field has the wrong type, a value out of range or not among its choices, or conflicts with another."""


class DataSourceError(MaskedSFTError, ValueError):
    """A dataset or tokenizer named by path or Hub name can't be found or read (e.g. a missing local file)."""
