"""The console script as a user meets it: a mistake ends in one `error:` line (no traceback), `--debug` shows the
traceback, hints name flags, `--help` loads no heavy library, and each command lists only its own flags.

Each mistake runs the real console script (`python -m trl_masked_sft`) in a subprocess with this checkout first on
`PYTHONPATH`, offline (the test session's `HF_*_OFFLINE` variables are inherited).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trl_masked_sft.cli import main
from trl_masked_sft.cli.errors import DEBUG_ENV, as_flags, pop_debug
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`trl-masked-sft ARGV` in a fresh process, as a user runs it."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "examples")])}
    environment.pop(DEBUG_ENV, None)
    environment.update(env or {})
    command = [sys.executable, "-m", "trl_masked_sft", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=cwd)


def assert_one_error(result: subprocess.CompletedProcess, *pieces: str) -> str:
    """Exit code 1, no traceback, and an `error:` line on stderr holding every piece."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for piece in pieces:
        assert piece in errors[0], (piece, errors[0])
    return errors[0]


@pytest.fixture
def qa_file(tmp_path):
    rows = [{"prompt": f"What is {i} km in m?", "completion": f" <answer>{i * 1000}</answer>"} for i in range(6)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_missing_data_file_is_one_error_line(tmp_path):
    """`audit --dataset_name nope.jsonl`: the path and the fix, no traceback."""
    result = cli("audit", "--dataset_name", "nope.jsonl", "--tokenizer_name_or_path", "tiny-demo", cwd=tmp_path)
    assert_one_error(result, "--dataset_name 'nope.jsonl': no such file or folder", "Fix:")


def test_a_mistyped_local_model_path_is_one_error_line(qa_file, tmp_path):
    """`train --model_name_or_path ./tinymodl` (a typo) names the flag and the folder, not transformers' repo-id
    rule."""
    result = cli("train", "--dataset_name", str(qa_file), "--model_name_or_path", "./tinymodl", cwd=tmp_path)
    line = assert_one_error(result, "--model_name_or_path './tinymodl': no such folder", "Fix:")
    assert "Repo id must" not in line


def test_a_model_name_that_is_no_hub_id_is_one_error_line(qa_file, tmp_path):
    """A name that is neither a folder nor a valid Hub id: the Hub client's rule, whole, and the fix."""
    result = cli("train", "--dataset_name", str(qa_file), "--model_name_or_path", "owner//name", cwd=tmp_path)
    assert_one_error(result, "'owner//name' is neither a folder on this machine nor a valid Hub name", "Fix:")


def test_a_model_folder_without_a_tokenizer_is_one_error_line(qa_file, tmp_path):
    """A saved model with no tokenizer files: said, with the fix (save the tokenizer beside it)."""
    folder = tmp_path / "model"
    build_tiny_model(build_tiny_tokenizer(), hidden_size=16, num_hidden_layers=1).save_pretrained(folder)
    result = cli("train", "--dataset_name", str(qa_file), "--model_name_or_path", str(folder), cwd=tmp_path)
    assert_one_error(result, "the folder has no tokenizer files", "tokenizer.save_pretrained(")


def test_offline_hub_access_is_one_whole_error_line(qa_file, tmp_path):
    """A Hub tokenizer while offline: the library's message whole (it used to be cut mid-URL), then the fix."""
    result = cli(
        "inspect", "--dataset_name", str(qa_file), "--tokenizer_name_or_path", "HuggingFaceTB/SmolLM2-360M-Instruct",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )  # fmt: skip
    line = assert_one_error(result, "can't load a tokenizer", "Fix:")
    assert "'https://. Fix" not in line
    assert line.count("'https://") == len(re.findall(r"'https://[^' ]+'", line))  # every quoted URL is whole


def test_a_config_error_names_the_flag_not_the_python_field(qa_file):
    """From the CLI, the fix hint says `--max_length`, not the Python field."""
    result = cli("audit", "--dataset_name", str(qa_file), "--tokenizer_name_or_path", "tiny-demo", "--max_length", "1")
    assert_one_error(result, "`--max_length` must be at least 2, got 1")


def test_the_audit_verdict_names_flags(qa_file, capsys):
    """`audit`'s policy verdict (exit 1) gives its fixes as flags too."""
    assert (
        main(["audit", "--dataset_name", str(qa_file), "--tokenizer_name_or_path", "tiny-demo", "--max_length", "5"])
        == 1
    )
    err = capsys.readouterr().err
    assert "raise `--max_length` (now 5)" in err and "set `--masked_row_policy drop`" in err
    assert "masked_row_policy='drop'" not in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(how, tmp_path):
    """`--debug` (anywhere on the line) or `TRL_MASKED_SFT_DEBUG=1` lets the error through with its traceback."""
    argv = ["audit", "--dataset_name", "nope.jsonl"] + (["--debug"] if how == "flag" else [])
    result = cli(*argv, env={DEBUG_ENV: "1"} if how == "environment" else None, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "DataSourceError: --dataset_name 'nope.jsonl'" in result.stderr


def test_a_mistyped_flag_is_a_short_error_with_a_guess(qa_file):
    """An unknown flag: exit 2, a few lines (not the full flag list), and the closest flag."""
    result = cli("train", "--dataset_name", str(qa_file), "--max_lenght", "3")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) <= 3, result.stderr
    assert "--max_lenght" in result.stderr and "did you mean --max_length?" in result.stderr


def test_top_level_help_imports_no_heavy_library():
    """`--help` needs neither torch nor transformers nor TRL: it answers at once."""
    code = (
        "import sys; from trl_masked_sft.cli import main; main(['--help']);"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_inspect_and_audit_help_list_only_their_own_flags(command, capsys):
    """The masking flags and the command's own, never the optimizer, Hub or DeepSpeed flags of `train`."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset_name", "--dataset_train_split", "--tokenizer_name_or_path", "--max_length"):
        assert flag in out
    for flag in ("--learning_rate", "--deepspeed", "--push_to_hub", "--optim"):
        assert flag not in out
    assert len(out.splitlines()) < 175  # 157 with the chat controls (issue 24)


def test_train_help_keeps_the_full_training_arguments(capsys):
    """`train --help` lists TrainingArguments too."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--learning_rate" in out and "--deepspeed" in out and "--masked_row_policy" in out


def test_dataset_split_is_an_alias_of_dataset_train_split(qa_file, capsys):
    """`inspect`/`audit` take TRL's `--dataset_train_split`; the old `--dataset_split` still works."""
    argv = ["--dataset_name", str(qa_file), "--tokenizer_name_or_path", "tiny-demo"]
    assert main(["audit", *argv, "--dataset_split", "train"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["audit", *argv, "--dataset_train_split", "nope"])
    assert (
        info.value.code == 2 and "--dataset_train_split 'nope' not in the splits ['train']" in capsys.readouterr().err
    )


def test_without_a_tokenizer_the_demo_one_is_named_on_stderr(qa_file, capsys):
    """No `--tokenizer_name_or_path`: the toy tokenizer is used, and said so with the fix."""
    assert main(["audit", "--dataset_name", str(qa_file)]) == 0
    err = capsys.readouterr().err
    assert "no --tokenizer_name_or_path given" in err and "tiny-demo" in err and "Fix:" in err


def test_an_explicit_tokenizer_gets_no_warning(qa_file, capsys):
    """Naming the demo tokenizer on purpose is not warned about."""
    assert main(["audit", "--dataset_name", str(qa_file), "--tokenizer_name_or_path", "tiny-demo"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_fix_hints_are_rewritten_into_flags():
    """Backticked fields that are flags become `--flag value`; columns, calls and non-literal values stay."""
    flags = {"max_length", "masked_row_policy", "completion_only_loss", "label_names"}
    message = (
        "`max_length` is 1. Fix: set `masked_row_policy='drop'` or `completion_only_loss=False`, "
        '`label_names=["labels"]`; column `completion`, `processing_class=tokenizer`, `max_length=n + 1`.'
    )
    assert as_flags(message, flags) == (
        "`--max_length` is 1. Fix: set `--masked_row_policy drop` or `--completion_only_loss false`, "
        "`--label_names labels`; column `completion`, `processing_class=tokenizer`, `max_length=n + 1`."
    )


def test_debug_is_taken_off_the_command_line(monkeypatch):
    """`--debug` never reaches the parser; the environment variable asks for tracebacks too."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert pop_debug(["audit", "--debug", "--rows", "2"]) == (["audit", "--rows", "2"], True)
    assert pop_debug(["audit"]) == (["audit"], False)
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert pop_debug(["audit"]) == (["audit"], True)


def test_demo_training_runs_on_one_thread_without_pin_memory_warnings(qa_file, tmp_path, monkeypatch, capsys):
    """`train` with the demo model trains on one intra-op thread (as the example does: a tiny model on many threads
    spends its steps synchronising them), restores the count after, pins no memory without an accelerator (no
    `pin_memory` warning), and logs the audit as scalars only."""
    import warnings

    import torch

    from trl_masked_sft import trainer as trainer_module

    seen = {}
    original = trainer_module.MaskedSFTTrainer.train

    def train(self, *args, **kwargs):
        seen["threads"], seen["pin_memory"] = torch.get_num_threads(), self.args.dataloader_pin_memory
        result = original(self, *args, **kwargs)
        seen["logs"] = self.state.log_history
        return result

    monkeypatch.setattr(trainer_module.MaskedSFTTrainer, "train", train)
    torch.set_num_threads(2)
    argv = ["train", "--dataset_name", str(qa_file), "--model_name_or_path", "tiny-demo"]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "3"]
    argv += ["--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert seen["threads"] == 1 and torch.get_num_threads() == 2
    assert seen["pin_memory"] is torch.accelerator.is_available()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert not [key for entry in seen["logs"] for key, value in entry.items() if isinstance(value, str)]
