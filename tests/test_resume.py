"""Resuming: a run SIGKILLed mid-epoch resumes from its last complete checkpoint to the same weights and losses."""

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

from trl_masked_sft import CheckpointError
from trl_masked_sft.checkpoints import last_complete_checkpoint, resolve_resume_checkpoint
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("resume_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """The subprocess runs on one thread; so does the in-process run, for the same float reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adapter(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _losses(trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_weights_and_losses(tmp_path, one_thread):
    """SIGKILL while saving checkpoint-9; resume=True skips the partial folder, resumes mid-epoch from checkpoint-6,
    and ends with the uninterrupted run's adapter weights and step losses (1e-5)."""
    run = _load_script()
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.run(
        [sys.executable, str(SCRIPT), str(killed_dir)], capture_output=True, text=True, timeout=120, env=env
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    assert not (killed_dir / "checkpoint-9" / "trainer_state.json").exists()  # the partial checkpoint it left
    assert last_complete_checkpoint(killed_dir) == (
        str(killed_dir / "checkpoint-6"),
        [str(killed_dir / "checkpoint-9")],
    )

    reference = run.build_trainer(str(tmp_path / "reference"))
    reference.train()

    resumed = run.build_trainer(str(killed_dir))
    resumed.train(resume_from_checkpoint=True)

    assert resumed.state.global_step == reference.state.global_step == run.MAX_STEPS
    expected, got = _adapter(reference), _adapter(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
    reference_losses, resumed_losses = _losses(reference), _losses(resumed)
    for step in range(7, run.MAX_STEPS + 1):  # the steps trained after the resume
        assert resumed_losses[step] == pytest.approx(reference_losses[step], abs=1e-5), step


def _checkpoint(path: Path, *, state: str | None = None, weights: str | None = "model.safetensors") -> Path:
    """A checkpoint folder with a `trainer_state.json` (`state`, or a sound one) and a tiny weights file."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    step = int(path.name.rsplit("-", 1)[-1])
    (path / "trainer_state.json").write_text(state or f'{{"global_step": {step}, "train_batch_size": 4}}')
    if weights:
        save_file({"w": torch.zeros(2)}, str(path / weights))
    return path


def test_resume_true_skips_incomplete_checkpoints(tmp_path):
    """`resume_from_checkpoint=True` picks the highest checkpoint with weights and a sound trainer_state.json."""
    _checkpoint(tmp_path / "checkpoint-2", weights="adapter_model.safetensors")
    _checkpoint(tmp_path / "checkpoint-4", state='{"trunc')  # killed while writing it
    _checkpoint(tmp_path / "checkpoint-6", weights=None)  # state without weights: never chosen
    _checkpoint(tmp_path / "checkpoint-8", state="{}")  # corrupt state
    (tmp_path / "checkpoint-10").mkdir()  # killed before writing it
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-2")


def test_resume_from_an_incomplete_checkpoint_path_names_the_last_complete_one(tmp_path):
    """An explicit partial checkpoint is refused, naming what is missing and the checkpoint to use instead."""
    _checkpoint(tmp_path / "checkpoint-3")
    (tmp_path / "checkpoint-6").mkdir()
    with pytest.raises(CheckpointError, match=r"(?s)checkpoint-6'` is incomplete.*resume from .*checkpoint-3"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))


def test_resume_true_without_any_complete_checkpoint_says_how_to_start(tmp_path):
    """No complete checkpoint at all: the error says to start afresh."""
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(CheckpointError, match=r"no complete checkpoint .*incomplete: .*checkpoint-1.*start afresh"):
        resolve_resume_checkpoint(True, str(tmp_path))


TWO_NODES = Path(__file__).parent / "scripts" / "two_nodes.py"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> tuple[list[dict], str]:
    """tests/scripts/two_nodes.py as two torchrun "nodes" of one process, each with its own output_dir: the results of
    both ranks and their joined output. The whole process group of each node is killed if it hangs."""
    out = tmp_path_factory.mktemp("nodes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
    launches = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(node),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(TWO_NODES),
                str(out),
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        for node in (0, 1)
    ]
    logs = []
    for process in launches:
        try:
            logs.append(process.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in launches:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail("the two-node run did not finish in 240 s (a rank hangs)")
    files = [out / f"rank{r}.json" for r in (0, 1)]
    assert all(f.is_file() for f in files), "\n".join(log[-3000:] for log in logs)
    return [json.loads(f.read_text()) for f in files], "\n".join(logs)


@pytest.mark.slow
def test_two_nodes_with_their_own_checkpoints_resume_from_the_same_one(two_nodes):
    """`save_on_each_node=True`, separate output_dirs: both ranks resume from checkpoint-4 and train steps 5-6."""
    ranks, _ = two_nodes
    if TRANSFORMERS_MAJOR < 5:  # 4.x can't load a checkpoint on CPU ranks: refused before, naming the fix
        assert all("needs transformers 5.x" in r["per_node"]["message"] for r in ranks), ranks
        return
    for result in ranks:
        assert result["per_node"]["resumed_from"] == "checkpoint-4"
        assert result["per_node"]["steps"][-2:] == [5, 6] and result["per_node"]["last_step"] == 6


@pytest.mark.slow
def test_a_node_without_the_newest_checkpoint_makes_every_rank_resume_from_an_older_one(two_nodes):
    """Node 1's checkpoint-4 is incomplete: every rank resumes from checkpoint-2, said once (by rank 0)."""
    ranks, log = two_nodes
    if TRANSFORMERS_MAJOR < 5:  # as above: the ranks agree, then the resume is refused on 4.x
        assert all("Resuming from checkpoint-2 with 2 CPU processes" in r["lagging"]["message"] for r in ranks)
    else:
        assert [r["lagging"]["resumed_from"] for r in ranks] == ["checkpoint-2", "checkpoint-2"]
    assert log.count("Resuming every rank from checkpoint-2") == 1
    assert "node 1" in log and "checkpoint-4: it has no readable `trainer_state.json`" in log


@pytest.mark.slow
def test_a_node_without_any_checkpoint_stops_every_rank_with_one_error_naming_it(two_nodes):
    """`save_on_each_node=False` on separate disks: both ranks raise the same CheckpointError naming node 1 and the fix."""
    ranks, _ = two_nodes
    errors = [r["main_only"] for r in ranks]
    assert [e["error"] for e in errors] == ["CheckpointError"] * 2
    assert errors[0]["message"] == errors[1]["message"]
    message = errors[0]["message"]
    assert "node 1" in message and "nothing complete" in message and "checkpoint-2 is its last complete one" in message
    assert "`save_on_each_node=True`" in message and "storage every node shares" in message
