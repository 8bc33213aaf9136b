"""The public surface: the names `trl_masked_sft` exports, its typed entry points, and an import that loads nothing
heavy until a name is used."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import trl_masked_sft
from trl_masked_sft.pipeline import PreparationPipeline

#: What a TRL user needs. A change here is a change of the public API: update README and the changelog with it.
PUBLIC = [
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
#: Importable from the package root for scripts written against 0.1.0, but not public.
COMPATIBLE = ["IGNORE_INDEX", "Layout", "MaskingOptions", "homework_lora_config"]


def test_the_public_names_are_pinned_and_sorted():
    """`__all__` is exactly the public list, sorted; recipe helpers and internals are not in it."""
    assert trl_masked_sft.__all__ == PUBLIC == sorted(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC + COMPATIBLE)
def test_every_exported_and_compatible_name_imports(name):
    """Each name resolves from the package root (lazily) to the object of its home module."""
    value = getattr(trl_masked_sft, name)
    assert value is not None and name in dir(trl_masked_sft)


def test_star_import_gives_the_public_names_only():
    """`from trl_masked_sft import *` brings exactly `__all__`."""
    namespace: dict = {}
    exec("from trl_masked_sft import *", namespace)
    assert sorted(k for k in namespace if not k.startswith("__")) == PUBLIC


def test_an_unknown_name_is_an_attribute_error():
    """A typo fails as a missing attribute does, naming it."""
    with pytest.raises(AttributeError, match="MaskedSFTTrainr"):
        trl_masked_sft.MaskedSFTTrainr  # noqa: B018


@pytest.mark.parametrize("old, new", sorted(trl_masked_sft._MOVED.items()))
def test_a_renamed_module_imports_under_its_old_name(old, new):
    """`import trl_masked_sft.validation` (and every old name in `_MOVED`) gives the module it became, itself."""
    assert importlib.import_module(f"trl_masked_sft.{old}") is importlib.import_module(f"trl_masked_sft.{new}")


def test_the_subpackages_keep_their_entry_points_where_they_were():
    """`from trl_masked_sft.chat import chat_labels` and the console script `trl_masked_sft.cli:main` still resolve."""
    from trl_masked_sft.chat import chat_labels
    from trl_masked_sft.cli import main

    assert chat_labels is trl_masked_sft.chat_labels
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    module, name = re.search(r'^trl-masked-sft = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    assert getattr(importlib.import_module(module), name) is main


def test_importing_the_package_loads_no_heavy_library():
    """`import trl_masked_sft` leaves torch, transformers and TRL unloaded until a name needs them."""
    code = (
        "import sys, trl_masked_sft;"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "function",
    [
        trl_masked_sft.MaskedSFTTrainer.__init__,
        trl_masked_sft.audit_dataset,
        trl_masked_sft.prepare_dataset,
        trl_masked_sft.inspect_rows,
        PreparationPipeline.__init__,
        PreparationPipeline.from_config,
        PreparationPipeline.prepare,
    ],
    ids=lambda f: f.__qualname__,
)
def test_the_entry_points_are_typed(function):
    """Every parameter (but `self`/`cls`) and the return value carry a type hint."""
    signature = inspect.signature(function)
    untyped = [
        name for name, p in signature.parameters.items() if name not in ("self", "cls") and p.annotation is p.empty
    ]
    assert untyped == [] and signature.return_annotation is not signature.empty
