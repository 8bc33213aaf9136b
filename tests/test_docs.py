"""Docs that cannot go stale: the generated parts of docs/ are what their generators write now."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(
    TRANSFORMERS_MAJOR < 5, reason="the tables hold the main line's messages (4.x lists other `optim` choices)"
)
def test_the_troubleshooting_tables_are_what_the_generator_writes_now():
    """docs/troubleshooting.md's "Every refused input" tables equal tests/scripts/bad_inputs_table.py's output, case
    by case (fix: `python3 tests/scripts/bad_inputs_table.py --write`)."""
    import datasets
    from transformers.utils import logging

    sys.path.insert(0, str(SCRIPTS.parent))  # the generator imports test_bad_inputs
    generator = _script("bad_inputs_table")
    bars, verbosity = datasets.is_progress_bar_enabled(), logging.get_verbosity()
    try:  # the generator quiets warnings, logs and progress bars: the tests after this one get them back
        with warnings.catch_warnings():
            now = generator.tables().rstrip("\n").splitlines()
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    page = generator.on_the_page().splitlines()
    stale = [line for line in page if line not in now]
    missing = [line for line in now if line not in page]
    assert not stale and not missing and now == page, (
        f"docs/troubleshooting.md is stale: {len(stale)} lines differ from the generator's, {len(missing)} lines "
        "are missing. Fix: run `python3 tests/scripts/bad_inputs_table.py --write`.\n"
        + "\n".join(f"- {line}" for line in stale[:5])
        + "\n"
        + "\n".join(f"+ {line}" for line in missing[:5])
    )
