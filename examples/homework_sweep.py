"""The recipe sweep on the homework's own files: one `train_homework.py` run per setting, one JSON line per run.

    python examples/homework_sweep.py --data-dir path/to/homework/data                 # every planned run, in order
    python examples/homework_sweep.py --data-dir path/to/data --runs lr1e-3-ep5,r16    # some of them

Each run is a child process of `train_homework.py` (the real SmolLM2-135M, the homework's rules: LoRA, adapter under
20 MB, scored on the first 100 valid questions as the homework's `benchmark()` does), scored at each epoch's end
too (`--score-each-epoch`). Its line in `--results` holds the settings, the minutes of training, the loss, the
accuracy and answer_rate (final and per epoch), the adapter's size, the child's peak RSS and the machine's load
average before and after, since minutes measured on a shared machine mean little without it. Runs already in the
results file are skipped, so an interrupted sweep picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PLAN", "main", "parse_args", "run_one", "sweep_command"]

_HERE = Path(__file__).resolve().parent

#: name -> train_homework.py flags, in the order the sweep runs them (most promising first). Every run also gets
#: `--score-each-epoch`, so one run gives the accuracy after each of its epochs.
PLAN: dict[str, list[str]] = {
    "lr1e-3-ep6-bs16-cos-r16": [
        "--learning-rate", "1e-3", "--epochs", "6", "--batch-size", "16", "--lr-scheduler", "cosine",
        "--warmup", "0.05", "--lora-r", "16",
    ],
    "lr2e-3-ep6-bs32-cos-r8": [
        "--learning-rate", "2e-3", "--epochs", "6", "--batch-size", "32", "--lr-scheduler", "cosine",
        "--warmup", "0.05", "--lora-r", "8",
    ],
    "lr1e-3-ep6-bs16-cos-r8": [
        "--learning-rate", "1e-3", "--epochs", "6", "--batch-size", "16", "--lr-scheduler", "cosine",
        "--warmup", "0.05", "--lora-r", "8",
    ],
    "lr1e-3-ep6-bs16-cos-attn-r32": [
        "--learning-rate", "1e-3", "--epochs", "6", "--batch-size", "16", "--lr-scheduler", "cosine",
        "--warmup", "0.05", "--lora-r", "32", "--target-modules", "q_proj,k_proj,v_proj,o_proj",
    ],
}  # fmt: skip


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sweep_command(flags: list[str], data_dir: str, out: Path) -> list[str]:
    """The `train_homework.py` command of one run: scored as the homework's `benchmark()` scores (the first 100 valid
    questions, whatever the example's default), after each epoch, the untrained model not scored."""
    return [
        sys.executable,
        str(_HERE / "train_homework.py"),
        "--data-dir",
        data_dir,
        "--output-dir",
        str(out),
        "--no-progress-bar",
        "--num-eval",
        "100",
        "--score-each-epoch",
        "--no-score-before",
        *flags,
    ]


def run_one(name: str, flags: list[str], data_dir: str, out_root: Path, threads: int | None = None) -> dict:
    """Run `train_homework.py` with `flags` in a child process; return its JSON line (also when it failed)."""
    out = out_root / name
    command = sweep_command(flags, data_dir, out)
    load_before = _load()
    started = time.time()
    with open(out_root / f"{name}.log", "w", encoding="utf-8") as log_file:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    line: dict = {
        "name": name,
        "flags": flags,
        "exit_code": child.returncode,
        "threads": threads,
        "wall_minutes": round((time.time() - started) / 60, 2),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),  # ru_maxrss is in KiB on Linux
        "load_before": load_before,
        "load_after": _load(),
    }
    metrics_file = out / "metrics.json"
    if child.returncode == 0 and metrics_file.is_file():
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
        line.update(
            {
                "settings": {
                    k: m[k]
                    for k in (
                        "learning_rate",
                        "epochs",
                        "batch_size",
                        "lr_scheduler_type",
                        "warmup",
                        "lora_r",
                        "lora_alpha",
                        "target_modules",
                        "prompt_format",
                    )
                },
                "train_minutes": round(m["train_seconds"] / 60, 2),
                "steps": m["steps"],
                "first_loss": m["first_loss"],
                "last_loss": m["last_loss"],
                "accuracy": m["after"]["accuracy"],
                "answer_rate": m["after"]["answer_rate"],
                "num_eval": m["num_eval"],
                "adapter_mb": round(m["adapter_mb"], 2),
                "curve": m["curve"],
                "peak_rss": m["peak_rss"],
                "precision": m["precision"],
                "activation_checkpointing": m["activation_checkpointing"],
            }
        )
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="The homework's folder with train.json and valid.json.")
    parser.add_argument(
        "--runs", default=None, help=f"Comma-separated names of PLAN to run (default: all): {list(PLAN)}"
    )
    parser.add_argument("--results", default="docs/homework_sweep.jsonl", help="JSON-lines file the runs go to.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Torch threads per run (OMP_NUM_THREADS). On a machine busier than its cores, 1 wastes less time "
        "waiting for a descheduled second thread. Default: torch's (one per core).",
    )
    parser.add_argument("--output-root", default="outputs/sweep", help="Where each run's adapter, metrics and log go.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = args.runs.split(",") if args.runs else list(PLAN)
    unknown = [n for n in names if n not in PLAN]
    if unknown:
        raise SystemExit(f"Unknown run(s) {unknown}; `--runs` takes names of PLAN: {list(PLAN)}")
    results = Path(args.results)
    done = set()
    if results.is_file():
        done = {json.loads(line)["name"] for line in results.read_text(encoding="utf-8").splitlines() if line.strip()}
    out_root = Path(args.output_root)
    out_root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in done:
            print(f"{name}: already in {results}, skipped", flush=True)
            continue
        print(f"{name}: running {PLAN[name]}", flush=True)
        line = run_one(name, PLAN[name], args.data_dir, out_root, args.threads)
        with results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
