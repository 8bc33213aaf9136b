"""Completion-only SFT for Hugging Face TRL that never trains silently on nothing or on the wrong tokens."""

from .collator import DataCollatorForCompletionOnlyLM
from .config import MaskedSFTConfig, homework_lora_config
from .errors import (
    AllMaskedBatchError,
    DatasetFormatError,
    DatasetTypeError,
    LabelsOverwrittenError,
    MaskedSFTWarning,
    TemplateNotFoundError,
    UnsupervisedRowsError,
)
from .trainer import MaskedSFTTrainer
from .validation import validate_batch

__version__ = "0.1.0"

__all__ = [
    "AllMaskedBatchError",
    "DataCollatorForCompletionOnlyLM",
    "DatasetFormatError",
    "DatasetTypeError",
    "LabelsOverwrittenError",
    "MaskedSFTConfig",
    "MaskedSFTTrainer",
    "MaskedSFTWarning",
    "TemplateNotFoundError",
    "UnsupervisedRowsError",
    "homework_lora_config",
    "validate_batch",
]
