"""Print the "Every refused input" section of docs/troubleshooting.md from the table of tests/test_bad_inputs.py.

Runs every case (about 20 s) and writes, per group, the error class, the start of the message and its fix:

    python3 tests/scripts/bad_inputs_table.py > /tmp/cases.md   # then paste it under "## Every refused input"
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, before any installed copy

import datasets  # noqa: E402
import test_bad_inputs as table  # noqa: E402
from transformers.utils import logging  # noqa: E402

from trl_masked_sft import MaskedSFTConfig  # noqa: E402
from trl_masked_sft.tiny import build_tiny_tokenizer  # noqa: E402

TITLES = {
    "data": "Data: values, types, shapes, encodings, sizes (Dataset, IterableDataset, lists, dicts)",
    "config": "Config: every `MaskedSFTConfig` field and the TRL/transformers fields we read",
    "model": "Model, tokenizer, collator",
    "checkpoints": "Checkpoints",
    "cli": "Command line",
}


def _group(case: str, error: str) -> str:
    if case.startswith("cli-"):
        return "cli"
    if error == "CheckpointError" or case.startswith("resume"):
        return "checkpoints"
    if error == "ConfigError" or case == "eval-strategy-without-eval-dataset":
        return "config"
    model_errors = ("ModelSetupError", "LabelsOverwrittenError", "AllMaskedBatchError")
    if (
        error in model_errors
        or "tokenizer" in case
        or case in ("peft-model-and-peft-config", "chat-data-and-no-chat-template")
    ):
        return "model"
    return "data"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _run(case, act, base_tokenizer) -> tuple[str, str]:
    folder = Path(tempfile.mkdtemp())

    def make_config(**overrides):
        settings = {
            "output_dir": str(folder / "out"),
            "report_to": "none",
            "save_strategy": "no",
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "disable_tqdm": True,
            "dataloader_pin_memory": False,
        }
        return MaskedSFTConfig(**{**settings, **overrides})

    run = table.Run(tokenizer=copy.deepcopy(base_tokenizer), make_config=make_config, tmp_path=folder)
    try:
        act(run)
    except BaseException as error:  # noqa: BLE001 - every case raises; its class and message are the output
        return type(error).__name__, str(error).replace(f"{folder}/", "")  # paths as in `output_dir`
    return "-", "(no error)"


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    base = build_tiny_tokenizer()
    with contextlib.redirect_stdout(sys.stderr):  # training logs of the checkpoint cases stay out of the table
        rows = [(case, *_run(case, act, base)) for case, act, _, _ in table.CASES]
    out = []
    for group, title in TITLES.items():
        chosen = [row for row in rows if _group(row[0], row[1]) == group]
        out += [f"### {title} ({len(chosen)})", "", "| case | error | message (start) | fix |", "|---|---|---|---|"]
        for case, error, message in chosen:
            head, _, fix = message.partition("Fix:")
            if not fix:
                found = re.search(r"(?<![a-z])(Use |Set |set |Pass |pass |Either |Remove )", message)
                head, fix = (message[: found.start()], message[found.start() :]) if found else (message, "")
            out.append(f"| `{case}` | `{error}` | {_short(head, 150)} | {_short(fix.strip(), 110)} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
