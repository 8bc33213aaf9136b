"""Two processes (`accelerate launch`, gloo on CPU): a failure on one rank stops every rank with the same error."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_checks.py"
LAUNCH_TIMEOUT_S = 200  # imports in two processes on two cores plus four short scenarios; ~40 s unloaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[list[dict], str]:
    """Launch tests/scripts/ddp_checks.py on 2 processes once; kill the whole process group if it hangs. The results
    of both ranks and the launch's output (both ranks' stdout and stderr)."""
    out = tmp_path_factory.mktemp("ddp")
    # `--multi_gpu` picks accelerate's torchrun launcher; without a GPU each process runs on CPU with gloo.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(SCRIPT), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"2-process run did not finish in {LAUNCH_TIMEOUT_S} s (a rank hangs):\n{log[-3000:]}")
    files = [out / f"rank{r}.json" for r in (0, 1)]
    assert all(f.is_file() for f in files), f"exit code {process.returncode}:\n{log[-3000:]}"
    results = [json.loads(f.read_text()) for f in files]
    assert [r["world_size"] for r in results] == [2, 2]
    return results, log


@pytest.fixture(scope="module")
def ranks(launch) -> list[dict]:
    return launch[0]


@pytest.mark.slow
def test_batch_all_masked_on_one_rank_stops_both_ranks_with_the_error(ranks):
    """Only rank 1's batch is all masked: both ranks raise AllMaskedBatchError within 60 s, none hangs."""
    errors = [r["masked"] for r in ranks]
    assert [e["error"] for e in errors] == ["AllMaskedBatchError", "AllMaskedBatchError"]
    assert all(e["seconds"] < 60 for e in errors)
    assert "on rank 1 (of 2) has no supervised token" in errors[0]["message"]
    assert "This rank (0) stops too" in errors[0]["message"]
    assert "rows 0-3" in errors[1]["message"] and "Fix:" in errors[1]["message"]


@pytest.mark.slow
def test_preflight_runs_on_the_main_process_and_its_verdict_reaches_every_rank(ranks):
    """The dataset audit runs on rank 0 only; both ranks raise the same UnsupervisedRowsError."""
    assert [r["preflight"]["audits"] for r in ranks] == [1, 0]
    assert [r["preflight"]["error"] for r in ranks] == ["UnsupervisedRowsError"] * 2
    assert ranks[0]["preflight"]["message"] == ranks[1]["preflight"]["message"]
    assert "32 of 32 rows" in ranks[0]["preflight"]["message"]


@pytest.mark.slow
def test_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(ranks):
    """Rank 1's loss is NaN at step 2: both ranks stop at step 2 with TrainingHealthError naming rank 1."""
    for result in ranks:
        assert result["nan"]["error"] == "TrainingHealthError"
        assert "Training stopped at step 2: the loss is nan (not finite) on rank 1 (of 2)" in result["nan"]["message"]
        assert result["nan"]["seconds"] < 60


def _load_script():
    spec = importlib.util.spec_from_file_location("ddp_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mask_metrics_of_two_processes_equal_one_process_on_the_same_global_batch(ranks, tmp_path):
    """2 processes x 2 rows x accumulation 2 log the mask metrics of 1 process x 2 rows x accumulation 4: supervised
    tokens summed over ranks and micro-batches, shares as global ratios (TRL's num_tokens agrees too)."""
    torch.set_num_threads(1)
    script = _load_script()
    single = script.metrics_trainer(str(tmp_path / "single"), accumulation=4)
    single.train()
    expected = [{k: e[k] for k in script.METRIC_KEYS} for e in single.state.log_history if "loss" in e]
    assert len(expected) == 2
    for result in ranks:
        assert len(result["metrics"]["logs"]) == 2
        for got, want in zip(result["metrics"]["logs"], expected, strict=True):
            assert got == pytest.approx(want, rel=1e-9), (got, want)


@pytest.mark.slow
def test_rank_1_loads_the_data_rank_0_prepared_instead_of_preparing_it_again(ranks):
    """The pipeline runs on rank 0 only; rank 1's train set is the Arrow files rank 0 saved (memory-mapped)."""
    assert [r["metrics"]["prepared"] for r in ranks] == [1, 0]
    assert [r["metrics"]["loaded_from_files"] for r in ranks] == [False, True]


@pytest.mark.slow
def test_the_audit_summary_shows_once_per_run_at_the_default_verbosity(launch):
    """The pre-flight summary (a warning) is printed by rank 0 only: once in the output of both processes."""
    _, log = launch
    lines = [line for line in log.splitlines() if line.startswith("Pre-flight audit of the train dataset: 24 rows")]
    assert len(lines) == 1, log[-3000:]
