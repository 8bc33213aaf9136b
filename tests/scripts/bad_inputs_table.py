"""The tables of the "Every refused input" section of docs/troubleshooting.md, from tests/test_bad_inputs.py.

Runs every case (about 30 s) and writes, per group, the error class, the start of the message and its fix. The
tables are everything after the section's introduction (from `FIRST_HEADING` to the end of the page);
tests/test_docs.py fails when they differ from what this script writes now:

    python3 tests/scripts/bad_inputs_table.py            # print the tables
    python3 tests/scripts/bad_inputs_table.py --write    # write them into docs/troubleshooting.md
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


PAGE = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
FIRST_HEADING = "### " + TITLES["data"]


def _stable(text: str) -> str:
    """The message as on any machine: the working folder as `.`, object addresses as `0x…`."""
    return re.sub(r"0x[0-9a-f]{6,}", "0x…", text.replace(os.getcwd(), "."))


def _short(text: str, limit: int) -> str:
    text = " ".join(_stable(text).split()).replace("|", "\\|")
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


def tables() -> str:
    """The section's tables as they are now (everything from `FIRST_HEADING` to the end of the page)."""
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
    return "\n".join(out)


def on_the_page() -> str:
    """The tables as docs/troubleshooting.md has them."""
    page = PAGE.read_text()
    return page[page.index(FIRST_HEADING) :].rstrip("\n")


def main() -> None:
    now = tables()
    if "--write" in sys.argv[1:]:
        page = PAGE.read_text()
        PAGE.write_text(page[: page.index(FIRST_HEADING)] + now.rstrip("\n") + "\n")
    else:
        print(now)


if __name__ == "__main__":
    main()
