"""Completion-only SFT for Hugging Face TRL that never trains silently on nothing or on the wrong tokens.

Names are imported on first use (module `__getattr__`), so `import trl_masked_sft` and `trl-masked-sft --help` do not
load torch, transformers or TRL. `__all__` is what a TRL user needs; `homework_lora_config` (the course recipe's
LoRA settings), `MaskingOptions`, `Layout` and `IGNORE_INDEX` stay importable from here for scripts written against
0.1.0, but are not part of it. Modules renamed since 0.1.0 import under their old names too (`_MOVED`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers (and tests/test_architecture.py's import graph) see
    from .audit import audit_dataset, prepare_dataset
    from .batch_checks import validate_batch
    from .chat import ChatMask, chat_labels
    from .collator import DataCollatorForCompletionOnlyLM
    from .config import MaskedSFTConfig
    from .config import homework_lora_config as homework_lora_config  # compatibility, not in __all__
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
    from .inspector import inspect_rows, render_html, render_terminal
    from .layout import Layout as Layout  # compatibility, not in __all__
    from .masking import IGNORE_INDEX as IGNORE_INDEX  # compatibility, not in __all__
    from .options import MaskingOptions as MaskingOptions  # compatibility, not in __all__
    from .pipeline import PreparationPipeline, PreparedDataset
    from .report import AuditReport
    from .run_checks import TrainingHealthGuard
    from .trainer import MaskedSFTTrainer

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
    "LabelsOverwrittenError",
    "MaskedSFTConfig",
    "MaskedSFTError",
    "MaskedSFTTrainer",
    "MaskedSFTWarning",
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
    "inspect_rows",
    "prepare_dataset",
    "render_html",
    "render_terminal",
    "validate_batch",
]

#: The module that defines each name importable from the package root.
_HOMES = {
    **dict.fromkeys(("audit_dataset", "prepare_dataset"), "audit"),
    **dict.fromkeys(("ChatMask", "chat_labels"), "chat"),
    "DataCollatorForCompletionOnlyLM": "collator",
    **dict.fromkeys(("MaskedSFTConfig", "homework_lora_config"), "config"),
    "MaskingOptions": "options",
    **dict.fromkeys((name for name in __all__ if name.endswith(("Error", "Warning"))), "errors"),
    "Layout": "layout",
    "TrainingHealthGuard": "run_checks",
    **dict.fromkeys(("inspect_rows", "render_html", "render_terminal"), "inspector"),
    "IGNORE_INDEX": "masking",
    **dict.fromkeys(("PreparationPipeline", "PreparedDataset"), "pipeline"),
    "AuditReport": "report",
    "MaskedSFTTrainer": "trainer",
    "validate_batch": "batch_checks",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


#: Modules renamed since 0.1.0 (issue 26), old name → the module it became: `import trl_masked_sft.validation` gives
#: `trl_masked_sft.batch_checks` itself, loaded on first use. `chat` and `cli` are subpackages whose `__init__` keeps
#: their entry points (`chat_labels`, `main`).
_MOVED = {
    "constraints": "config_checks",
    "values": "row_checks",
    "validation": "batch_checks",
    "health": "run_checks",
    "steps": "run_checks",
    "end_of_turn": "chat.end_of_turn",
    "conversations": "chat.conversations",
    "controls": "chat.controls",
    "cli_errors": "cli.errors",
    "sources": "cli.sources",
}


class _MovedModules:
    """Finds `trl_masked_sft.<old name>` and loads it as the module it became; any other name is left to the others."""

    @staticmethod
    def find_spec(fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModules)

    @staticmethod
    def create_module(spec: Any) -> Any:
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")

    @staticmethod
    def exec_module(module: Any) -> None:
        """Nothing to run: the module was loaded under its new name."""


sys.meta_path.insert(0, _MovedModules)  # first: an old file left on the path (an older install) must not win
