"""The main job is quiet: `examples/train_homework.py` on its default path emits no deprecation warning."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_homework.py"


def _example_main():
    spec = importlib.util.spec_from_file_location("train_homework_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_homework_example_emits_no_future_or_deprecation_warning(tmp_path, monkeypatch):
    """The example's default path (demo model, LoRA, TensorBoard, scoring) warns neither from our package nor from
    the libraries we call: every FutureWarning counts, and ours raise."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    main = _example_main()
    argv = ["--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--num-eval", "2", "--no-progress-bar"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("error", category=FutureWarning, module=r"trl_masked_sft(\.|$)")
        warnings.filterwarnings("error", category=DeprecationWarning, module=r"trl_masked_sft(\.|$)")
        metrics = main(argv)
    assert metrics["steps"] == 2
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning) and "trl_masked_sft" in w.filename
    ]
    assert ours == []
