"""Several processes: a failure on one rank stops every rank with the same error (two processes under `accelerate
launch`, gloo on CPU), the metrics and messages of the whole run, the data prepared once; FSDP and streaming said true."""

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

from trl_masked_sft import MaskedSFTTrainer
from trl_masked_sft.tiny import build_tiny_model

SCRIPT = Path(__file__).parent / "scripts" / "ddp_checks.py"
QA_ROWS = [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, 9)]
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


def test_a_streamed_dataset_stays_streamed_and_is_not_read_up_front(tokenizer, model, make_config):
    """A streamed train set of 50,000 rows: building the trainer peeks at its first row only (to learn the columns),
    and training 2 steps of 4 rows reads no more than the tokenizing map's read-ahead (one batch of 1,000 rows)."""
    from datasets import IterableDataset

    read = []

    def rows():
        for i in range(50_000):
            read.append(i)
            yield {"prompt": f"How many meters are there in {i} km?", "completion": f" <answer>{i * 1000}</answer>"}

    trainer = MaskedSFTTrainer(
        model, args=make_config(), train_dataset=IterableDataset.from_generator(rows), processing_class=tokenizer
    )
    assert isinstance(trainer.train_dataset, IterableDataset)
    assert set(read) == {0}, sorted(set(read))[:10]
    trainer.train()
    assert max(read) < 2_000, max(read)


def test_an_fsdp_config_that_runs_unsharded_says_so_once(tokenizer, model, make_config, monkeypatch, capfd):
    """accelerate's FSDP switch on a machine that runs the model whole: one warning, naming what happened and the fix."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    trainer = MaskedSFTTrainer(model, args=make_config(), train_dataset=QA_ROWS, processing_class=tokenizer)
    assert not trainer.is_fsdp_enabled
    err = capfd.readouterr().err
    assert err.count("FSDP is configured, but this run is not sharded") == 1, err
    assert "each holding the whole model" in err and "Fix: launch on GPUs" in err


def test_without_fsdp_configured_nothing_is_said_about_it(tokenizer, model, make_config, monkeypatch, capfd):
    """The warning names a configuration the user made; without one it stays silent."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    MaskedSFTTrainer(model, args=make_config(), train_dataset=QA_ROWS, processing_class=tokenizer)
    assert "FSDP" not in capfd.readouterr().err


def test_package_info_lines_follow_transformers_verbosity(tokenizer, model, make_config, capfd):
    """`score_supervised_only`'s line is INFO: hidden at transformers' default verbosity, shown after
    `transformers.logging.set_verbosity_info()`."""
    from transformers.utils import logging as hf_logging

    def run():
        trainer = MaskedSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_config(max_steps=1),
            train_dataset=QA_ROWS,
            processing_class=tokenizer,
        )
        capfd.readouterr()
        trainer.train()
        return capfd.readouterr().err

    previous = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_warning()
        assert "`score_supervised_only`" not in run()
        hf_logging.set_verbosity_info()
        assert "`score_supervised_only`" in run()
    finally:
        hf_logging.set_verbosity(previous)


DEEPSPEED_SCRIPT = Path(__file__).parent / "scripts" / "deepspeed_run.py"
NO_DEEPSPEED = (
    "deepspeed is not installed; CI leaves it out (its CPU optimizer op compiles for minutes on first use). "
    "To run this: DS_BUILD_OPS=0 pip install deepspeed"
)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_trains_and_stops_every_rank_together(stage, tmp_path):
    """ZeRO-2/3 on 2 CPU processes: DeepSpeed runs, the loss takes TRL's path (said), the mask metrics agree on both
    ranks, and an all-masked batch on rank 1 stops both ranks with AllMaskedBatchError."""
    pytest.importorskip("deepspeed", reason=NO_DEEPSPEED)
    config = tmp_path / "zero.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nuse_cpu: true\nnum_machines: 1\n"
        f"num_processes: 2\nmixed_precision: 'no'\nmain_process_port: {_free_port()}\ndeepspeed_config:\n"
        f"  zero_stage: {stage}\n  offload_optimizer_device: none\n  offload_param_device: none\n"
        f"  zero3_init_flag: false\n  gradient_accumulation_steps: 1\n"
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(
        [*command, str(DEEPSPEED_SCRIPT), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        log, _ = process.communicate(timeout=600)  # the first run compiles DeepSpeed's CPU Adam
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"the DeepSpeed run did not finish in 600 s:\n{log[-3000:]}")
    files = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    assert all(f.is_file() for f in files), f"exit code {process.returncode}:\n{log[-3000:]}"
    ranks = [json.loads(f.read_text()) for f in files]
    assert [r["deepspeed"] for r in ranks] == [True, True]
    assert all("DeepSpeed" in (r["loss_path"] or "") for r in ranks), [r["loss_path"] for r in ranks]
    assert ranks[0]["logs"] == ranks[1]["logs"] and len(ranks[0]["logs"]) == 2
    assert all(entry["supervised_tokens"] > 0 for entry in ranks[0]["logs"])
    assert [r["masked"]["error"] for r in ranks] == ["AllMaskedBatchError"] * 2
