"""Run a test script under `accelerate launch` on 2 CPU processes (gloo) and read back what each rank wrote."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def run_two_ranks(script: Path, out: Path, timeout: int = 300) -> list[dict]:
    """`script out` on 2 processes; each rank writes `out/rank{r}.json`, returned in rank order. Fails the test, with
    the log's end, when the run times out or a rank wrote nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(script), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"2-process run did not finish in {timeout} s:\n{log[-3000:]}")
    files = [out / f"rank{r}.json" for r in (0, 1)]
    assert all(f.is_file() for f in files), f"exit code {process.returncode}:\n{log[-3000:]}"
    return [json.loads(f.read_text()) for f in files]
