"""Completion-only SFT for Hugging Face TRL that never trains silently on nothing or on the wrong tokens."""

from .audit import audit_dataset, prepare_dataset
from .chat import ChatMask, chat_labels
from .collator import DataCollatorForCompletionOnlyLM
from .config import MaskedSFTConfig, MaskingOptions, homework_lora_config
from .errors import (
    AllMaskedBatchError,
    CheckpointError,
    ConfigError,
    DatasetFormatError,
    DatasetTypeError,
    DataSourceError,
    LabelsOverwrittenError,
    MaskedSFTError,
    MaskedSFTWarning,
    ModelSetupError,
    TemplateNotFoundError,
    TrainingHealthError,
    TruncatedCompletionError,
    UnsupervisedRowsError,
)
from .formats import Layout
from .health import TrainingHealthGuard
from .inspector import inspect_rows, render_html, render_terminal
from .masking import IGNORE_INDEX
from .pipeline import PreparationPipeline, PreparedDataset
from .report import AuditReport
from .trainer import MaskedSFTTrainer
from .validation import validate_batch

__version__ = "0.1.0"

__all__ = [
    "AllMaskedBatchError",
    "AuditReport",
    "ChatMask",
    "CheckpointError",
    "ConfigError",
    "DataCollatorForCompletionOnlyLM",
    "DataSourceError",
    "DatasetFormatError",
    "DatasetTypeError",
    "IGNORE_INDEX",
    "LabelsOverwrittenError",
    "Layout",
    "MaskedSFTConfig",
    "MaskedSFTError",
    "MaskedSFTTrainer",
    "MaskedSFTWarning",
    "MaskingOptions",
    "ModelSetupError",
    "PreparationPipeline",
    "PreparedDataset",
    "TemplateNotFoundError",
    "TrainingHealthError",
    "TrainingHealthGuard",
    "TruncatedCompletionError",
    "UnsupervisedRowsError",
    "audit_dataset",
    "chat_labels",
    "homework_lora_config",
    "inspect_rows",
    "prepare_dataset",
    "render_html",
    "render_terminal",
    "validate_batch",
]
