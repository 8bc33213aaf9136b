"""`trl-masked-sft train|inspect|audit`: help, argparse-style errors, exit codes, the homework YAML recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trl_masked_sft.cli import main

REPO = Path(__file__).resolve().parents[1]
HOMEWORK_DATA = REPO.parent / "shared" / "data" / "unit_conversion"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def qa_file(tmp_path):
    rows = [{"prompt": f"What is {i} km in m?", "completion": f" <answer>{i * 1000}</answer>"} for i in range(12)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


@pytest.mark.parametrize("command", ["train", "inspect", "audit"])
def test_help_works_for_each_command(command, capsys):
    """`COMMAND --help` prints the usage with the command's options and exits 0."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: trl-masked-sft {command}" in out and "--masked_row_policy" in out


def test_top_level_help_lists_the_commands(capsys):
    """`--help` alone lists the three commands."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "inspect", "audit"))


def test_unknown_command_is_an_argparse_style_error(capsys):
    """A bad command exits 2 with an argparse-style message."""
    assert main(["trian"]) == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_unknown_flag_is_an_argparse_style_error(qa_file, capsys):
    """A misspelled flag exits 2 naming it."""
    with pytest.raises(SystemExit) as info:
        main(["audit", "--dataset_name", str(qa_file), "--max_lenght", "3"])
    assert info.value.code == 2
    assert "--max_lenght" in capsys.readouterr().err


def test_audit_passes_and_writes_json(qa_file, tmp_path, capsys):
    """A clean dataset: exit 0, summary printed, JSON report written."""
    report_path = tmp_path / "report.json"
    assert main(["audit", "--dataset_name", str(qa_file), "--json_path", str(report_path)]) == 0
    assert "12 rows, 0 with no supervised token" in capsys.readouterr().out
    assert json.loads(report_path.read_text())["rows"] == 12


def test_audit_exits_1_when_the_policy_would_stop_training(qa_file, capsys):
    """Every answer truncated: exit 1 and the policy's error on stderr."""
    assert main(["audit", "--dataset_name", str(qa_file), "--max_length", "5"]) == 1
    assert "truncated at max_length 5" in capsys.readouterr().err


def test_inspect_prints_masks_and_writes_html(qa_file, tmp_path, capsys):
    """`inspect` shows plain markers off a TTY and writes the HTML page."""
    page = tmp_path / "masks.html"
    assert main(["inspect", "--dataset_name", str(qa_file), "--rows", "2", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[prompt]What is 1 km in m?[/prompt][TRAIN] <answer>1000</answer><|eos|>[/TRAIN]" in out
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_inspect_colours_when_asked(qa_file, capsys):
    """`--color always` colours the terminal output."""
    assert main(["inspect", "--dataset_name", str(qa_file), "--rows", "1", "--color", "always"]) == 0
    assert "\033[1;30;48;5;" in capsys.readouterr().out  # trained: bold, on the page's green (256 colours)


@pytest.mark.parametrize("module", ["trl_masked_sft", "trl_masked_sft.cli"])
def test_console_script_runs_as_a_module(module):
    """`python -m trl_masked_sft --help` works (what `accelerate launch -m` uses), and so does the older
    `-m trl_masked_sft.cli`."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "trl-masked-sft" in out.stdout


@pytest.mark.slow
def test_train_runs_the_homework_data_from_the_yaml_recipe(tmp_path):
    """The homework recipe trains the demo model on the homework's own files and saves the adapter."""
    if not HOMEWORK_DATA.is_dir():
        pytest.skip(f"homework data not found at {HOMEWORK_DATA} (only present beside the project's CI checkout)")
    recipe = (REPO / "examples" / "homework_recipe.yaml").read_text()
    recipe = recipe.replace("dataset_name: outputs/homework_data", f"dataset_name: {HOMEWORK_DATA}")
    (tmp_path / "recipe.yaml").write_text(recipe)
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--config",
            str(tmp_path / "recipe.yaml"),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    assert (out / "adapter_model.safetensors").is_file()
    audit = json.loads((out / "masked_sft_audit.json").read_text())
    assert audit["train"]["rows"] == 1000 and audit["train"]["rows_fully_masked"] == 0
