"""The benchmark harness (`benchmarks/run.py --fast`): it runs, and contenders on the same tokens end on the same loss.

Timings are never asserted here (CI machines are shared and noisy); `benchmarks/RESULTS.md` holds the measured ones.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from trl_masked_sft import MaskedSFTTrainer, homework_lora_config

REPO = Path(__file__).resolve().parents[1]
HOMEWORK_TRAIN = REPO.parent / "shared" / "data" / "unit_conversion" / "train.json"
#: The rows of the profile table (`benchmarks/step_profile.py`), in order.
PROFILE_PARTS = [
    "data",
    "embedding",
    "attention",
    "MLP",
    "other forward",
    "LM head + loss",
    "checks and metrics",
    "backward",
    "optimizer",
    "rest",
]
CONTENDERS = {
    "homework",
    "trl",
    "masked",
    "masked_unpacked",
    "masked_full_head",
    "trl_grouped",
    "trl_padded",
    "masked_padded",
    "trl_chat",
    "masked_chat",
}


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory) -> dict:
    """One `--fast` run of the harness in a fresh process, its results read back from JSON."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--fast",
            "--json",
            str(out / "r.json"),
            "--out",
            str(out / "R.md"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "r.json").read_text())
    results["markdown"] = (out / "R.md").read_text()
    return results


@pytest.mark.slow
def test_fast_mode_runs_every_contender_and_writes_the_report(fast_results):
    """Every contender trains one epoch; the report has the contenders table and the targets table."""
    assert set(fast_results["runs"]) == CONTENDERS
    for key, runs in fast_results["runs"].items():
        assert len(runs) == 1 and runs[0]["steps"] > 0 and runs[0]["supervised"] > 0, key
    assert {row["target"] for row in fast_results["targets"]} == {"info", "P2", "P3", "P4"}  # P1 retired (issue 25)
    assert set(fast_results["prep"]) == {"homework prompt/completion", "homework pad-128", "chat"}
    assert "## Epoch time" in fast_results["markdown"] and "## Targets" in fast_results["markdown"]


@pytest.mark.slow
def test_contenders_on_the_same_tokens_end_on_the_same_loss(fast_results):
    """Same supervised tokens in every same-tokens group, and the same loss to float32 rounding (1e-4 relative)."""
    check = fast_results["loss_check"]
    assert check["ok"], check
    for group, info in check["groups"].items():
        assert len(set(info["supervised"].values())) == 1, group
        assert info["max_rel_loss_diff"] <= 1e-4, group


@pytest.mark.slow
def test_packing_runs_on_fewer_positions_than_padding(fast_results):
    """The speed comes from fewer padded positions, not fewer tokens: positions drop, supervised tokens stay."""
    runs = {key: runs[0] for key, runs in fast_results["runs"].items()}
    assert runs["masked"]["positions"] < runs["trl"]["positions"] < runs["homework"]["positions"]
    assert runs["masked_padded"]["positions"] == runs["masked"]["positions"]
    assert runs["masked"]["supervised"] == runs["trl"]["supervised"] == runs["homework"]["supervised"]


@pytest.mark.slow
def test_homework_data_is_read_from_the_shared_folder(fast_results):
    """With ../shared present the harness trains on the homework's own train.json (else on generated questions)."""
    if not HOMEWORK_TRAIN.is_file():
        pytest.skip(f"{HOMEWORK_TRAIN} is absent (the shared data folder is not beside this clone)")
    assert "train.json" in fast_results["data"]["homework"]


@pytest.mark.slow
def test_head_mode_fast_runs_every_contender_and_the_same_tokens_end_on_the_same_loss(tmp_path):
    """`--head --fast` (the LM-head benchmark on a small model): every contender trains, the supervised-only path sees
    the same supervised tokens and ends on the same loss as the every-position path, and memory is measured."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--head", "--fast", "--json", str(tmp_path / "h.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "h.json").read_text())
    assert results["ok"]
    for name, summary in results["summary"].items():
        assert {"trl", "masked", "masked_full_head"} <= set(summary), name
        assert summary["loss_check"]["max_rel_loss_diff"] <= 1e-4, name
        assert summary["masked"]["supervised"] == summary["masked_full_head"]["supervised"] > 0, name
        assert all(summary[key]["growth_mib"] > 0 for key in ("trl", "masked", "masked_full_head")), name


@pytest.mark.slow
def test_real_mode_fast_trains_every_contender_and_reports_its_numbers(tmp_path, smollm2_dir):
    """`--real --fast` (SmolLM2-135M, 4 rows a step, 2 steps): every contender trains on the same real tokens, its
    settings are read back from its trainer, and tokens/s, GFLOP/s, matmul rates and losses come out (no timing is
    judged)."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--real",
            "--fast",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "real.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "real.json").read_text())
    summary = results["summary"]
    assert summary["ok"] and summary["same_tokens"]
    assert set(summary["contenders"]) == {"masked", "masked_autocast", "trl_bf16", "trl_fp32"}
    assert summary["trl_best"] in {"trl_bf16", "trl_fp32"}
    assert all(rate > 0 for rate in summary["matmul_gflops"].values())
    assert results["parameters"] > 100e6  # SmolLM2-135M, not a tiny stand-in
    for key, s in summary["contenders"].items():
        assert len(s["losses"]) == 2 and all(math.isfinite(x) and x > 0 for x in s["losses"]), key
        assert s["step_tokens"][0] > 0 and s["tokens_per_second"] > 0 and s["gflops"] > 0, key
        assert s["of_bf16_matmul"] > 0 and s["of_fp32_matmul"] > 0, key
        assert s["supervised"] > 0 and s["first_loss_rel_diff"] <= 1e-2, key
    assert summary["contenders"]["trl_bf16"]["precision"] == "bf16 autocast"
    assert summary["contenders"]["trl_fp32"]["precision"] == "float32"
    assert not summary["contenders"]["trl_bf16"]["checkpointing"]
    assert summary["contenders"]["masked"]["precision"] in {"float32", "bf16 autocast"}
    assert summary["masked_over_trl_tokens_per_second"] > 0
    # issue 25: the frozen weights in bf16 give autocast's numbers; the model-shape rate and the goals are reported
    masked, autocast = summary["contenders"]["masked"], summary["contenders"]["masked_autocast"]
    assert masked["losses"] == pytest.approx(autocast["losses"], rel=1e-5)
    assert results["roofline"]["gflops"] > 0 and results["roofline"]["tokens"] == masked["step_tokens"][1]
    assert all(s["of_roofline"] > 0 for s in summary["contenders"].values())
    assert {g["goal"].split(" ")[1] for g in summary["goals"]} == {"tokens/s", "useful"}
    assert "model-shape bf16 rate" in done.stdout
    assert results["data"].startswith("the homework's train.json") == HOMEWORK_TRAIN.is_file()
    assert "## The real SmolLM2-135M-Instruct on this CPU" in done.stdout and "GFLOP/s" in done.stdout


def _run_real(tmp_path, *flags: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--real", "--fast", *flags, "--threads", "1"]
        + ["--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / "r.json").read_text()), done.stdout


def test_the_step_profile_breaks_a_tiny_clipped_run_into_its_parts(tokenizer, model, make_config):
    """`StepProfile` on this transformers line (4.x clips inline, 5.x in `Trainer._clip_grad_norm`): a tiny LoRA run
    with gradient clipping trains, every part is there and none negative, the parts sum to the mean timed step."""
    spec = importlib.util.spec_from_file_location("step_profile", REPO / "benchmarks" / "step_profile.py")
    step_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_profile)
    args = make_config(max_steps=4, max_grad_norm=1.0, per_device_train_batch_size=4)
    rows = [[f"What is {i} km in m?", 1000.0 * i] for i in range(16)]
    trainer = MaskedSFTTrainer(
        model=model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=homework_lora_config(r=4)
    )
    profile = step_profile.StepProfile().attach(trainer)
    trainer.train()
    parts = profile.record()["parts"]
    assert list(parts) == PROFILE_PARTS
    assert all(value >= 0 for value in parts.values()) and parts["optimizer"] > 0 and parts["backward"] > 0
    assert len(profile.steps) == 3  # the first step is the warm-up
    assert sum(parts.values()) == pytest.approx(sum(profile.steps) / len(profile.steps))


@pytest.mark.slow
def test_real_profile_fast_breaks_a_step_into_its_parts(tmp_path, smollm2_dir):
    """`--real --profile --fast`: both MaskedSFTTrainer variants profiled; every part is there, none negative, the
    model's own parts took time, and the parts sum to the step (no timing is judged)."""
    results, stdout = _run_real(tmp_path, "--profile")
    assert set(results["runs"]) == {"masked", "masked_autocast"}
    for key, (record,) in results["runs"].items():
        parts = record["parts"]
        assert list(parts) == PROFILE_PARTS, key
        assert all(value >= 0 for value in parts.values()), key
        assert all(parts[p] > 0 for p in ("attention", "MLP", "LM head + loss", "backward", "optimizer")), key
        assert sum(parts.values()) == pytest.approx(sum(record["profiled_steps"]) / len(record["profiled_steps"]))
    assert "| backward |" in stdout and "Where a step goes" in stdout


@pytest.mark.slow
def test_real_long_fast_reports_checkpointing_and_memory_goals(tmp_path, smollm2_dir):
    """`--real --long --fast`: long rows (about 580 tokens), the defaults, checkpointing forced off and TRL's defaults
    train on the same tokens; TRL's defaults have checkpointing on and the forced run has it off."""
    results, stdout = _run_real(tmp_path, "--long")
    summary = results["summary"]
    assert set(summary["contenders"]) == {"masked", "masked_ckpt_off", "trl_defaults"}
    assert summary["same_tokens"] and summary["trl_best"] == "trl_defaults"
    per = summary["contenders"]
    assert per["trl_defaults"]["checkpointing"] and not per["masked_ckpt_off"]["checkpointing"]
    assert all(540 <= t / 2 <= 640 for t in per["masked"]["step_tokens"]), per["masked"]["step_tokens"]
    assert "Long rows on the real SmolLM2-135M-Instruct" in stdout
