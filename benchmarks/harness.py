"""The benchmark harness: processes, timing and memory, the same for every mode of `run.py`.

- timing: `StepTimer` (each optimizer step's wall time), `train_once` (one contender's run: build, train, count),
  `validate_cost`, `prep_throughput`, `timed_preflight`, and `matmul_gflops` (the machine's matmul rate);
- counting: `Counter` (positions and supervised tokens each forward pass sees);
- processes and memory: `peak_rss` (one fresh process per contender), `peak_rss_kib` (`VmHWM`), `memory_mark` and
  `memory_peak` (growth during `train()`), `interleaved` (the rotating order of the contenders);
- `machine_info` and `quiet` (silence for clean timings).

Imported by `run.py`, which puts this checkout's package and `examples/` first on `sys.path`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, PreparationPipeline, validate_batch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEED = 42
#: bf16 where the GPU has it (as MaskedSFTConfig's default resolves), given to every contender alike.
BF16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def interleaved(keys: Sequence[str], repeat: int) -> list[str]:
    """The order of `keys` in repeat `repeat`: rotated by one each repeat (A B C, B C A, C A B, ...), so a load that
    comes and goes on a shared machine touches every contender alike."""
    shift = repeat % len(keys)
    return list(keys[shift:]) + list(keys[:shift])


@dataclass
class Run:
    """One training run of one contender."""

    key: str
    seconds: float
    build_seconds: float
    loss: float
    steps: int
    positions: int  # token positions the model ran on (padding included)
    supervised: int  # supervised target tokens after the causal shift
    preflight_seconds: float = 0.0
    peak_gpu_mib: float = 0.0  # peak GPU memory allocated while training (0 on CPU)
    step_seconds: list[float] = field(default_factory=list)  # each optimizer step, data loading included


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from the end of the previous one (data loading and collation included)."""

    def __init__(self):
        self.steps: list[float] = []
        self._last = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self._last = now


class Counter:
    """Counts the positions and supervised tokens each training forward pass of the model sees (no host sync).

    `attach(model)` hooks the model (positions; supervised tokens from `labels`) and its LM head (the rows it projects
    when `score_supervised_only` hands it only the kept positions, flattened: no labels are passed then)."""

    def __init__(self):
        self.positions = 0
        self.supervised: list[torch.Tensor] = []

    def attach(self, model) -> Callable[[], None]:
        """Install the hooks; returns the function that removes them."""
        handles = [
            model.register_forward_pre_hook(self, with_kwargs=True),
            model.get_output_embeddings().register_forward_hook(self._head),
        ]
        return lambda: [handle.remove() for handle in handles]

    def __call__(self, module, args, kwargs):
        ids, labels = kwargs.get("input_ids"), kwargs.get("labels")
        if torch.is_grad_enabled() and isinstance(ids, torch.Tensor):
            self.positions += ids.numel()
            if isinstance(labels, torch.Tensor):
                self.supervised.append((labels[..., 1:] != -100).sum())
        return None

    def _head(self, module, args, output):
        # a `(kept, hidden)` input: the positions whose next label counts (transformers 5.x selects them through a
        # boolean `logits_to_keep`, 4.x through a pre-hook on the head); full rows come as `(batch, seq, hidden)`
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
            self.supervised.append(torch.tensor(args[0].shape[0]))
        return None

    def supervised_total(self) -> int:
        return int(torch.stack(self.supervised).sum()) if self.supervised else 0


@contextlib.contextmanager
def timed_preflight(totals: list[float]):
    """Add the time of each pre-flight audit (`PreparationPipeline._audit`) to `totals`."""
    original = PreparationPipeline._audit

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            totals.append(time.perf_counter() - start)

    PreparationPipeline._audit = timed
    try:
        yield
    finally:
        PreparationPipeline._audit = original


def train_once(key: str, build: Callable[[Any, str], Any], model, workdir: Path) -> tuple[Run, Any]:
    """Build the trainer of contender `key` (`build(model, output_dir)`) on `model`, train it, return the run and the
    trainer."""
    counter = Counter()
    detach = counter.attach(model)
    preflight: list[float] = []
    start = time.perf_counter()
    with timed_preflight(preflight):
        trainer = build(model, str(workdir / key))
    built = time.perf_counter() - start
    timer = StepTimer()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    detach()
    run = Run(
        key=key,
        seconds=seconds,
        build_seconds=built,
        loss=float(output.training_loss),
        steps=int(output.global_step),
        positions=counter.positions,
        supervised=counter.supervised_total(),
        preflight_seconds=sum(preflight),
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
        step_seconds=timer.steps,
    )
    return run, trainer


def validate_cost(trainer, calls: int) -> float:
    """Seconds per `validate_batch` call on a real training batch of `trainer` (median of 5 rounds)."""
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            validate_batch(batch)
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def prep_throughput(
    tokenizer, model_fn: Callable[[], Any], workdir: Path, datasets_by_name: dict[str, Callable[[], Any]], repeats: int
) -> dict:
    """Rows per second of each trainer's dataset preparation (`_prepare_dataset`), interleaved, per data set."""
    results: dict[str, dict[str, list[float]]] = {}
    trainers = {}
    for name, data_fn in datasets_by_name.items():
        model = model_fn()
        extra = {"max_length": 1024} if name == "chat" else {}
        trl_args = SFTConfig(
            output_dir=str(workdir / "prep_trl"),
            bf16=False,
            report_to="none",
            max_length=extra.get("max_length", 128),
            completion_only_loss=True,
        )
        masked_args = MaskedSFTConfig(output_dir=str(workdir / "prep_masked"), report_to="none", **extra)
        sample = data_fn()
        trainers[name] = {
            "trl": SFTTrainer(model, args=trl_args, train_dataset=sample, processing_class=tokenizer),
            "masked": MaskedSFTTrainer(model_fn(), args=masked_args, train_dataset=sample, processing_class=tokenizer),
        }
        results[name] = {"trl": [], "masked": []}
    for repeat in range(repeats):
        for name, data_fn in datasets_by_name.items():
            order = ["trl", "masked"] if repeat % 2 == 0 else ["masked", "trl"]
            for who in order:
                trainer = trainers[name][who]
                raw = data_fn()
                start = time.perf_counter()
                prepared = trainer._prepare_dataset(raw, tokenizer, trainer.args, False, None, "train")
                seconds = time.perf_counter() - start
                results[name][who].append(len(prepared) / seconds)
    return {
        name: {who: statistics.median(values) for who, values in per.items()} | {"rows": len(datasets_by_name[name]())}
        for name, per in results.items()
    }


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: `VmHWM` of its own memory map on Linux (`ru_maxrss` is not reset by `exec`,
    so a child started by a large parent would report the parent's size), else `ru_maxrss`."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss(keys: list[str], fast: bool, repeats: int, model: str | None) -> dict[str, list[int]]:
    """Peak RSS (KiB) of each contender, each in its own fresh process, interleaved."""
    out: dict[str, list[int]] = {k: [] for k in keys}
    for repeat in range(repeats):
        for key in keys if repeat % 2 == 0 else list(reversed(keys)):
            command = [sys.executable, str(HERE / "run.py"), "--child-rss", key]
            command += (["--fast"] if fast else []) + (["--model", model] if model else [])
            command += ["--threads", str(torch.get_num_threads())]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
            out[key].append(json.loads(done.stdout.strip().splitlines()[-1])["maxrss_kib"])
    return out


@contextlib.contextmanager
def quiet():
    """Silence transformers/datasets logging, warnings and progress output for clean timings."""
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def machine_info() -> dict[str, Any]:
    """The CPU, core and thread counts, platform, versions and load average at the start."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": __import__("peft").__version__,
        "datasets": datasets.__version__,
        "accelerate": __import__("accelerate").__version__,
        "load_average_start": os.getloadavg()[0],
    }


def memory_mark(device: str) -> float:
    """Start measuring peak memory; return the memory in use now (MiB). CPU: reset the peak RSS (`VmHWM`, through
    /proc/self/clear_refs) and read `VmRSS`; CUDA: reset `max_memory_allocated` and read `memory_allocated`."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_kib("VmRSS") / 1024


def memory_peak(device: str) -> float:
    """The peak memory (MiB) since `memory_mark`: `VmHWM` on CPU, `max_memory_allocated` on CUDA."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status_kib("VmHWM") / 1024


def proc_status_kib(field_name: str) -> int:
    """A KiB field (`VmRSS`, `VmHWM`) of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def measure_training(trainer, model, device: str = "cpu") -> dict[str, Any]:
    """Train `trainer` (whose model is `model`) once: each step's time (the first one apart, as warm-up), the memory
    growth during `train()`, the peak RSS of the process, the loss and the positions and supervised tokens seen."""
    timer, counter = StepTimer(), Counter()
    trainer.add_callback(timer)
    detach = counter.attach(model)
    base = memory_mark(device)
    output = trainer.train()
    growth = memory_peak(device) - base
    detach()
    return {
        "growth_mib": growth,
        "peak_rss_mib": proc_status_kib("VmHWM") / 1024,
        "step_seconds": timer.steps[1:],
        "warmup_seconds": timer.steps[0],
        "loss": float(output.training_loss),
        "supervised": counter.supervised_total(),
        "positions": counter.positions,
    }


def run_child(flag: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """Run `run.py <flag> <spec as JSON>` in a fresh process (memory can only be read per process) with this process's
    thread count; return the JSON it prints last. Raises with its output if it fails."""
    command = [sys.executable, str(HERE / "run.py"), flag, json.dumps(spec), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """The machine's matmul rate in GFLOP/s: an `n`×`n` by `n`×`n` product (2·n³ operations) in `dtype`, the fastest
    of the products run for about `seconds` (at least three, after one warm-up; another job can only slow one)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    torch.mm(a, b)
    fastest, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        began = time.perf_counter()
        torch.mm(a, b)
        fastest = min(fastest, time.perf_counter() - began)
        runs += 1
    return 2 * n**3 / fastest / 1e9


def logged_steps(log_history: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Each optimizer step's loss and real tokens (padding excluded), from a run logged every step: the tokens are
    the differences of the cumulative `num_tokens` TRL logs (`MaskedSFTTrainer` logs real tokens of packed batches
    too)."""
    entries = [entry for entry in log_history if "loss" in entry and "num_tokens" in entry]
    counts = [0] + [int(entry["num_tokens"]) for entry in entries]
    return [float(entry["loss"]) for entry in entries], [b - a for a, b in zip(counts, counts[1:], strict=False)]


def training_settings(args) -> dict[str, Any]:
    """What a trainer's arguments resolved to: precision, activation checkpointing, learning rate, rows per step."""
    precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "float32"
    return {
        "precision": precision,
        "checkpointing": bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing),
        "learning_rate": args.learning_rate,
        "batch": args.per_device_train_batch_size,
        "max_length": getattr(args, "max_length", None),
    }


def linear_shapes(model) -> dict[tuple[int, int], int]:
    """`{(in_features, out_features): how many}` of the model's linear layers (LoRA base layers counted, adapters not;
    a tied LM head counted once)."""
    shapes: dict[tuple[int, int], int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def model_shape_gflops(shapes: dict[tuple[int, int], int], tokens: int, dtype=torch.bfloat16, rounds: int = 3) -> dict:
    """The machine's rate on this workload's own products: for each linear shape, `tokens` × in by in × out (the
    forward) and `tokens` × out by out × in (the input gradient), in `dtype`; each product's fastest of `rounds`
    (another job can only slow one), weighted by how often the model has the shape. The roofline of a step."""
    generator = torch.Generator().manual_seed(0)
    total_flops, total_seconds, per_shape = 0.0, 0.0, {}
    for (n_in, n_out), count in sorted(shapes.items()):
        for rows, cols in ((n_in, n_out), (n_out, n_in)):
            x = torch.randn(tokens, rows, generator=generator).to(dtype)
            w = torch.randn(rows, cols, generator=generator).to(dtype)
            torch.mm(x, w)
            fastest = float("inf")
            for _ in range(rounds):
                began = time.perf_counter()
                torch.mm(x, w)
                fastest = min(fastest, time.perf_counter() - began)
            flops = 2 * tokens * rows * cols
            per_shape[f"{tokens}x{rows}x{cols}"] = flops / fastest / 1e9
            total_flops += count * flops
            total_seconds += count * fastest
    return {"gflops": total_flops / total_seconds / 1e9, "tokens": tokens, "per_shape": per_shape}
