"""Side-by-side benchmark of `MaskedSFTTrainer` (issue 6): epoch time, data preparation, validator cost, peak memory.

One process builds the same model for every contender and trains them interleaved (A B C, B C A, C A B, ...), so a
load that comes and goes on a shared machine touches all of them alike. Each optimizer step is timed; a contender's
epoch time is the sum of each step's fastest time over the repeats (every repeat runs the same batches), and the
wall-clock times and per-repeat ratios are shown beside it. Peak RSS (`VmHWM`) is measured in one subprocess per
contender (RSS only grows within a process).

    python benchmarks/run.py            # full run (about 15 minutes on two CPU cores), writes benchmarks/RESULTS.md
    python benchmarks/run.py --fast     # CI smoke run: tiny sizes, one repeat, no RSS, under a minute
    python benchmarks/run.py --head     # the LM head (issue 14): SmolLM2-360M-shaped, 4 and 32 layers, its section

Data: the homework's `train.json` read from `../shared/data/unit_conversion/` next to the repository when present,
else generated homework questions (`examples/homework_data.py`'s `generate_rows`); and a synthetic long-prompt chat set.
Contenders that train on the same tokens must end with the same loss: `loss_groups_agree` checks it (the test runs
it), and the table shows the supervised tokens and model positions each contender saw in its epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the homework recipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not another installed copy
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from homework import generate_rows, to_prompt_completion  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from trl_masked_sft import (  # noqa: E402
    MaskedSFTConfig,
    MaskedSFTTrainer,
    PreparationPipeline,
    homework_lora_config,
    validate_batch,
)
from trl_masked_sft.formats import format_answer  # noqa: E402
from trl_masked_sft.packing import packing_is_exact  # noqa: E402
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The homework's data, beside the repository (CI and this workspace have it at ../shared); absent elsewhere.
HOMEWORK_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "unit_conversion" / "train.json"
#: Losses of contenders that train on the same tokens may differ by float32 rounding only.
LOSS_RTOL = 1e-4
SEED = 42
#: bf16 where the GPU has it (as MaskedSFTConfig's default resolves), given to every contender alike.
BF16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Size:
    """How big a run is: model, data, repeats."""

    hidden: int
    layers: int
    heads: int
    homework_rows: int
    chat_rows: int
    batch: int
    chat_batch: int
    repeats: int
    prep_repeats: int
    validate_calls: int
    model: str | None = None  # a model name or folder to load (e.g. SmolLM2-360M on a GPU); None: the tiny Llama


FULL = Size(
    hidden=256,
    layers=4,
    heads=4,
    homework_rows=1000,
    chat_rows=192,
    batch=32,
    chat_batch=32,
    repeats=3,
    prep_repeats=5,
    validate_calls=2000,
)
FAST = Size(
    hidden=64,
    layers=2,
    heads=4,
    homework_rows=64,
    chat_rows=24,
    batch=16,
    chat_batch=8,
    repeats=1,
    prep_repeats=1,
    validate_calls=200,
)

#: The homework's training settings, which are MaskedSFTConfig's defaults, given explicitly to every contender so
#: that all train alike; one epoch; no TensorBoard, no checkpoints.
SHARED = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1,
    "activation_checkpointing": True,
    "logging_steps": 10,
    "report_to": "none",
    "save_strategy": "no",
    "seed": SEED,
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
}


# ---------------------------------------------------------------------------------------------------- data


def homework_rows(n: int) -> tuple[list[list[Any]], str]:
    """The homework's rows (first `n` of train.json) or, without the shared folder, `n` generated ones."""
    if HOMEWORK_TRAIN.is_file():
        rows = json.loads(HOMEWORK_TRAIN.read_text(encoding="utf-8"))[:n]
        return [
            [q, float(a)] for q, a in rows
        ], f"the homework's train.json ({len(rows)} rows, ../shared/data/unit_conversion/)"
    reason = f"{HOMEWORK_TRAIN} not found"
    return generate_rows(n, seed=0), f"generated homework questions ({n} rows; {reason})"


_FILLER = (
    "The conversion tables below list units of length, mass, time, volume, data size and speed. Each entry gives "
    "the factor to the base unit of its family, rounded to six significant digits, and the source of the value. "
    "Read the question, find both units in the same family, and divide the factors. "
).split()


def chat_rows(n: int, rng_seed: int = 1, *, short: bool = False) -> list[dict[str, Any]]:
    """`n` conversational prompt/completion rows with long, varied system prompts and short answers.

    The system prompt is 40 to 360 words (about 100 to 900 tokens with the benchmark's tokenizer; 10 to 80 words
    with `short`), so random batches mix long and short rows, as real chat SFT data does.
    """
    rng = random.Random(rng_seed)
    questions = generate_rows(n, seed=rng_seed)
    rows = []
    for question, answer in questions:
        words = rng.randint(10, 80) if short else rng.randint(40, 360)
        system = " ".join(rng.choice(_FILLER) for _ in range(words))
        rows.append(
            {
                "prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": format_answer(answer)}],
            }
        )
    return rows


def homework_tokenize(tokenizer, question: str, answer: str, max_length: int = 128) -> dict[str, list[int]]:
    """The homework's `tokenize()`: `f"{question} {answer}{eos}"` right-padded to 128, pad = eos, question and
    padding labelled -100 (the pattern users copy)."""
    tokenizer.padding_side = "right"
    full = tokenizer(
        f"{question} {answer}{tokenizer.eos_token}", padding="max_length", truncation=True, max_length=max_length
    )
    question_len = len(tokenizer(question)["input_ids"])
    labels = [-100] * question_len + full["input_ids"][question_len:]
    labels = [label if mask else -100 for label, mask in zip(labels, full["attention_mask"], strict=True)]
    return {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"], "labels": labels}


def homework_padded(tokenizer, rows: list[list[Any]]) -> Dataset:
    """The homework's pre-tokenized, pad-128 rows."""
    encoded = [homework_tokenize(tokenizer, q, format_answer(a)) for q, a in rows]
    return Dataset.from_dict({key: [row[key] for row in encoded] for key in ("input_ids", "attention_mask", "labels")})


def build_tokenizer(rows: list[list[Any]], chat: list[dict[str, Any]], model: str | None = None):
    """A byte-level BPE trained on the homework text and the chat set's text, pad = eos (as the homework sets it);
    with `model`, that model's own tokenizer."""
    if model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        return tokenizer
    corpus = [f"{q} {format_answer(a)}" for q, a in rows]
    corpus += [row["prompt"][0]["content"] for row in chat[:50]]
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=1024)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One way of training: a name, the data it trains on, and how to build its trainer."""

    key: str
    label: str
    data: str  # "homework" or "chat"
    build: Callable[[Any, str], Any]  # (peft model, output_dir) -> trainer
    same_tokens: str  # contenders of one group train on the same tokens: same supervised count, same loss
    reordered: bool = False  # same tokens in other batches and order: the loss may differ (reported, not checked)


def make_model(tokenizer, size: Size):
    """The benchmark model with the homework's LoRA adapter, the same weights for every contender: a tiny Llama, or
    `size.model` loaded (bf16 where the GPU supports it)."""
    if size.model is not None:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(size.model, dtype=torch.bfloat16 if BF16 else torch.float32)
    else:
        base = build_tiny_model(
            tokenizer, hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads, seed=0
        )
        base.config.max_position_embeddings = 2048
    torch.manual_seed(SEED)
    model = get_peft_model(base, homework_lora_config())
    model.enable_input_require_grads()  # as the homework does for activation checkpointing with a frozen base
    return model


def contenders(tokenizer, size: Size, rows, chat) -> list[Contender]:
    def sft_config(output_dir: str, **extra) -> SFTConfig:
        settings = {
            **SHARED,
            "per_device_train_batch_size": size.batch,
            "max_length": 128,
            "bf16": BF16,
            "label_names": ["labels"],
            "completion_only_loss": True,
            "save_total_limit": 1,
        }
        return SFTConfig(output_dir=output_dir, **{**settings, **extra})

    def masked_config(output_dir: str, **extra) -> MaskedSFTConfig:
        # Only what differs from MaskedSFTConfig's defaults (its defaults are the homework's settings).
        settings = {
            k: v for k, v in SHARED.items() if k not in ("learning_rate", "activation_checkpointing", "logging_steps")
        }
        settings["per_device_train_batch_size"] = size.batch
        return MaskedSFTConfig(output_dir=output_dir, **{**settings, **extra})

    def homework_trainer(model, output_dir):
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=size.batch, bf16=BF16, **SHARED)
        return Trainer(model=model, args=args, train_dataset=homework_padded(tokenizer, rows))

    def trl_trainer(data_fn, **extra):
        def build(model, output_dir):
            return SFTTrainer(
                model, args=sft_config(output_dir, **extra), train_dataset=data_fn(), processing_class=tokenizer
            )

        return build

    def masked_trainer(data_fn, **extra):
        def build(model, output_dir):
            return MaskedSFTTrainer(
                model, args=masked_config(output_dir, **extra), train_dataset=data_fn(), processing_class=tokenizer
            )

        return build

    def prompt_completion():
        return to_prompt_completion(rows)

    def padded():
        return homework_padded(tokenizer, rows)

    def chat_set():
        return Dataset.from_list(chat)

    chat_extra = {"max_length": 1024, "per_device_train_batch_size": size.chat_batch}
    grouped = {"train_sampling_strategy": "group_by_length"}
    return [
        Contender(
            "homework", "homework pattern: pad-128 rows + transformers.Trainer", "homework", homework_trainer, "hw"
        ),
        Contender("trl", "trl.SFTTrainer, prompt/completion rows", "homework", trl_trainer(prompt_completion), "hw"),
        Contender(
            "masked",
            "MaskedSFTTrainer (defaults), prompt/completion rows",
            "homework",
            masked_trainer(prompt_completion),
            "hw",
        ),
        Contender(
            "masked_unpacked",
            "MaskedSFTTrainer, pack_within_batch=False",
            "homework",
            masked_trainer(prompt_completion, pack_within_batch=False),
            "hw",
        ),
        Contender(
            "masked_full_head",
            "MaskedSFTTrainer, score_supervised_only=False (every position through the LM head; ablation)",
            "homework",
            masked_trainer(prompt_completion, score_supervised_only=False),
            "hw",
        ),
        Contender(
            "trl_grouped",
            "trl.SFTTrainer, train_sampling_strategy='group_by_length' (other batches and order)",
            "homework",
            trl_trainer(prompt_completion, **grouped),
            "hw",
            reordered=True,
        ),
        Contender("trl_padded", "trl.SFTTrainer, homework's pad-128 rows", "homework", trl_trainer(padded), "hw"),
        Contender(
            "masked_padded", "MaskedSFTTrainer, homework's pad-128 rows", "homework", masked_trainer(padded), "hw"
        ),
        # Not the same tokens: TRL also trains the newline its ChatML template renders after <|im_end|>; the
        # MaskedSFTTrainer's chat masking trains the assistant turn up to its end-of-turn token (`train_on_eot`).
        Contender(
            "trl_chat", "trl.SFTTrainer, long-prompt chat", "chat", trl_trainer(chat_set, **chat_extra), "chat-trl"
        ),
        Contender(
            "masked_chat",
            "MaskedSFTTrainer, long-prompt chat",
            "chat",
            masked_trainer(chat_set, **chat_extra),
            "chat-masked",
        ),
    ]


# ---------------------------------------------------------------------------------------------------- measuring


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


class _StepTimer(TrainerCallback):
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


class _Counter:
    """Counts the positions and supervised tokens each training forward pass of the model sees (no host sync)."""

    def __init__(self):
        self.positions = 0
        self.supervised: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs):
        ids, labels, keep = kwargs.get("input_ids"), kwargs.get("labels"), kwargs.get("logits_to_keep")
        if torch.is_grad_enabled() and isinstance(ids, torch.Tensor):
            self.positions += ids.numel()
            if isinstance(labels, torch.Tensor):
                self.supervised.append((labels[..., 1:] != -100).sum())
            elif isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
                # `score_supervised_only` passes no labels: the kept positions are those whose next label counts
                self.supervised.append(keep.sum())
        return None

    def supervised_total(self) -> int:
        return int(torch.stack(self.supervised).sum()) if self.supervised else 0


@contextlib.contextmanager
def _timed_preflight(totals: list[float]):
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


def train_once(contender: Contender, tokenizer, size: Size, workdir: Path) -> tuple[Run, Any]:
    """Build a fresh model and the contender's trainer, train one epoch, return the run and the trainer."""
    model = make_model(tokenizer, size)
    counter = _Counter()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    preflight: list[float] = []
    start = time.perf_counter()
    with _timed_preflight(preflight):
        trainer = contender.build(model, str(workdir / contender.key))
    built = time.perf_counter() - start
    timer = _StepTimer()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    handle.remove()
    run = Run(
        key=contender.key,
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


def prep_throughput(tokenizer, size: Size, workdir: Path, datasets_by_name: dict[str, Callable[[], Any]]) -> dict:
    """Rows per second of each trainer's dataset preparation (`_prepare_dataset`), interleaved, per data set."""
    results: dict[str, dict[str, list[float]]] = {}
    trainers = {}
    for name, data_fn in datasets_by_name.items():
        model = make_model(tokenizer, size)
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
            "masked": MaskedSFTTrainer(
                make_model(tokenizer, size), args=masked_args, train_dataset=sample, processing_class=tokenizer
            ),
        }
        results[name] = {"trl": [], "masked": []}
    for repeat in range(size.prep_repeats):
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


def _child_rss(key: str, fast: bool, model: str | None) -> None:
    """Subprocess entry: train one contender once and print its peak RSS (KiB) and loss as JSON."""
    size = replace(FAST if fast else FULL, model=model)
    rows, _ = homework_rows(size.homework_rows)
    chat = chat_rows(size.chat_rows, short=fast)
    tokenizer = build_tokenizer(rows, chat, size.model)
    contender = next(c for c in contenders(tokenizer, size, rows, chat) if c.key == key)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        run, _ = train_once(contender, tokenizer, size, Path(tmp))
    print(json.dumps({"key": key, "maxrss_kib": _peak_rss_kib(), "loss": run.loss}))


def _peak_rss_kib() -> int:
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
            command = [sys.executable, str(Path(__file__).resolve()), "--child-rss", key]
            command += (["--fast"] if fast else []) + (["--model", model] if model else [])
            command += ["--threads", str(torch.get_num_threads())]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
            out[key].append(json.loads(done.stdout.strip().splitlines()[-1])["maxrss_kib"])
    return out


@contextlib.contextmanager
def _quiet():
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


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Results:
    """Everything a run measured, as written to JSON and RESULTS.md."""

    mode: str
    machine: dict[str, Any]
    data: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prep: dict[str, dict[str, float]] = field(default_factory=dict)
    validate_seconds: float = 0.0
    probe_seconds: float = 0.0
    rss_kib: dict[str, list[int]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    loss_check: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
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


def median_of(results: Results, key: str, attr: str = "seconds") -> float:
    return statistics.median(run[attr] for run in results.runs[key])


def best_epoch(results: Results, key: str) -> float:
    """Epoch time with the machine's noise filtered out: each step's fastest time over the repeats, summed.

    A contender sees the same batches in the same order in every repeat (same seed), so step i is the same work each
    time; another job on the shared machine can only add time to it. (The best-of-repeats estimator of `timeit`.)
    """
    per_step = [run["step_seconds"] for run in results.runs[key]]
    return sum(min(times) for times in zip(*per_step, strict=True))


def paired_ratios(results: Results, numerator: str, denominator: str) -> list[float]:
    """Per-repeat ratios of two interleaved contenders (robust to load that drifts between repeats)."""
    return [
        a["seconds"] / b["seconds"] for a, b in zip(results.runs[numerator], results.runs[denominator], strict=True)
    ]


def loss_groups_agree(
    runs: dict[str, list[dict[str, Any]]], groups: dict[str, str], reordered: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Within each same-tokens group: the largest relative loss difference and whether the supervised-token counts
    are equal. `ok` when every group is within `LOSS_RTOL` and counts match. Contenders in `reordered` train on the
    same tokens in other batches: their token count is checked, their loss difference only reported."""
    report: dict[str, Any] = {"ok": True, "groups": {}}
    for group in sorted(set(groups.values())):
        keys = [k for k, g in groups.items() if g == group and k in runs]
        same_order = [k for k in keys if k not in reordered]
        losses = [run["loss"] for k in same_order for run in runs[k]]
        supervised = {k: runs[k][0]["supervised"] for k in keys}
        reference = losses[0]
        spread = max(abs(loss - reference) for loss in losses) / abs(reference)
        other_order = {
            k: statistics.median(abs(run["loss"] - reference) / abs(reference) for run in runs[k])
            for k in keys
            if k in reordered
        }
        same_tokens = len(set(supervised.values())) == 1
        ok = spread <= LOSS_RTOL and same_tokens
        report["groups"][group] = {
            "contenders": same_order,
            "max_rel_loss_diff": spread,
            "reordered_rel_loss_diff": other_order,
            "supervised": supervised,
            "ok": ok,
        }
        report["ok"] = report["ok"] and ok
    return report


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    def ratio_row(name: str, what: str, num: str, den: str, limit: float) -> dict[str, Any]:
        ratios = paired_ratios(results, num, den)
        value = best_epoch(results, num) / best_epoch(results, den)
        return {
            "target": name,
            "what": what,
            "value": value,
            "range": [min(ratios), max(ratios)],
            "limit": f"<= {limit:.2f}",
            "met": value <= limit,
        }

    ratios = [
        ("P1", "epoch time, MaskedSFTTrainer / homework pattern", "masked", "homework", 0.17),
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (homework)", "masked", "trl", 1.00),
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (long-prompt chat)", "masked_chat", "trl_chat", 1.00),
        ("P3", "epoch time on pad-128 rows, MaskedSFTTrainer / trl.SFTTrainer", "masked_padded", "trl_padded", 0.25),
    ]
    rows = [ratio_row(*row) for row in ratios if row[2] in results.runs and row[3] in results.runs]
    if "masked_full_head" in results.runs and "masked" in results.runs:
        head = paired_ratios(results, "masked", "masked_full_head")
        rows.append(
            {
                "target": "P1",
                "what": "epoch time, MaskedSFTTrainer / the same with score_supervised_only=False (the LM head's share; "
                "ablation)",
                "value": best_epoch(results, "masked") / best_epoch(results, "masked_full_head"),
                "range": [min(head), max(head)],
                "limit": "info",
                "met": None,
            }
        )
    if not {"masked", "trl", "masked_unpacked"} <= set(results.runs):  # a partial run (`--only`)
        return rows
    step = best_epoch(results, "masked") / statistics.median(run["steps"] for run in results.runs["masked"])
    share = results.validate_seconds / step
    rows.append(
        {
            "target": "P2",
            "what": "validate_batch per call / step time (MaskedSFTTrainer, homework)",
            "value": share,
            "range": [share, share],
            "limit": "<= 0.01",
            "met": share <= 0.01,
        }
    )
    preflight = statistics.median(run["preflight_seconds"] for run in results.runs["masked"])
    share = preflight / best_epoch(results, "masked")
    rows.append(
        {
            "target": "P2",
            "what": "pre-flight pass (once per run) / epoch time (MaskedSFTTrainer, homework)",
            "value": share,
            "range": [share, share],
            "limit": "<= 0.01",
            "met": share <= 0.01,
        }
    )
    unpacked = paired_ratios(results, "masked_unpacked", "trl")
    rows.append(
        {
            "target": "P2",
            "what": "epoch time, MaskedSFTTrainer with pack_within_batch=False / trl.SFTTrainer (all checks, no "
            "packing; ablation)",
            "value": best_epoch(results, "masked_unpacked") / best_epoch(results, "trl"),
            "range": [min(unpacked), max(unpacked)],
            "limit": "info",
            "met": None,
        }
    )
    for name, per in results.prep.items():
        value = per["masked"] / per["trl"]
        rows.append(
            {
                "target": "P4",
                "what": f"preparation rows/s, MaskedSFTTrainer / trl.SFTTrainer ({name})",
                "value": value,
                "range": [value, value],
                "limit": ">= 1.00",
                "met": value >= 1.0,
            }
        )
    for data, (ours, theirs) in {"homework": ("masked", "trl"), "chat": ("masked_chat", "trl_chat")}.items():
        if ours in results.rss_kib and theirs in results.rss_kib:
            value = statistics.median(results.rss_kib[ours]) / statistics.median(results.rss_kib[theirs])
            rows.append(
                {
                    "target": "P5",
                    "what": f"peak RSS, MaskedSFTTrainer / trl.SFTTrainer ({data})",
                    "value": value,
                    "range": [value, value],
                    "limit": "<= 1.05",
                    "met": value <= 1.05,
                }
            )
    return rows


def render(results: Results, labels: dict[str, str]) -> str:
    """RESULTS.md: machine, versions, data, the contenders table and the targets table."""
    m = results.machine
    gpu = any(run["peak_gpu_mib"] for runs in results.runs.values() for run in runs)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --fast' if results.mode == 'fast' else ''}` "
        f"({results.mode} mode). Reproduce and read the rows: [README.md](README.md).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, {m['platform']}; "
        f"load average {m['load_average_start']:.2f} at start, {m.get('load_average_end', float('nan')):.2f} at end "
        "(the machine is shared: contenders run interleaved, and epoch times take each step's fastest repeat).",
        f"- Versions: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
        f"peft {m['peft']}, datasets {m['datasets']}, accelerate {m['accelerate']}.",
        f"- Model: {results.data['model']}.",
        f"- Homework data: {results.data['homework']}; {results.data['homework_shape']}.",
        f"- Chat data: {results.data['chat']}.",
        f"- Settings: {results.data['settings']}.",
        "",
        "## Epoch time",
        "",
        "`epoch s` is the sum over the epoch's steps of each step's fastest time across the interleaved repeats (the "
        "same batches every repeat; another job on the machine can only add time); `wall s` is `train()`'s wall time, "
        "median and range over the repeats. Ratios in the targets table use `epoch s`.",
        "",
        "| contender | data | epoch s | wall s (median) | wall min-max | steps | s/step | tokens/s | model positions | "
        "supervised tokens | train loss |" + (" peak GPU MiB |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for key, runs in results.runs.items():
        seconds = [r["seconds"] for r in runs]
        first = runs[0]
        epoch = best_epoch(results, key)
        tokens = results.data["real_tokens"][first["data"]]
        lines.append(
            f"| {labels[key]} | {first['data']} | {epoch:.2f} | {statistics.median(seconds):.2f} | "
            f"{min(seconds):.2f}-{max(seconds):.2f} | {first['steps']} | {epoch / first['steps']:.3f} | "
            f"{tokens / epoch:,.0f} | {first['positions']:,} | {first['supervised']:,} | "
            f"{statistics.median(r['loss'] for r in runs):.6f} |"
            + (f" {max(r['peak_gpu_mib'] for r in runs):,.0f} |" if gpu else "")
        )
    check = results.loss_check
    lines += [
        "",
        "Loss check (same tokens ⇒ same loss, relative tolerance "
        f"{LOSS_RTOL:g}): " + ("passed" if check["ok"] else "FAILED") + ".",
    ]
    for group, info in check["groups"].items():
        for key, diff in info["reordered_rel_loss_diff"].items():
            lines.append(
                f"- {group}: {key} trains the same tokens in other batches and order; its loss differs by "
                f"{diff:.2e} (relative), as any change of order does."
            )
        lines.append(
            f"- {group}: max relative loss difference {info['max_rel_loss_diff']:.2e} across "
            f"{', '.join(info['contenders'])}; supervised tokens {'equal' if len(set(info['supervised'].values())) == 1 else info['supervised']}."
        )
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | value | wall-clock ratios per repeat | limit | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.targets:
        lines.append(
            f"| {row['target']} | {row['what']} | {row['value']:.4f} | {row['range'][0]:.4f}-{row['range'][1]:.4f} | "
            f"{row['limit']} | {'—' if row['met'] is None else 'yes' if row['met'] else '**no**'} |"
        )
    if results.prep:
        lines += [
            "",
            "## Data preparation",
            "",
            "| data | rows | trl.SFTTrainer rows/s | MaskedSFTTrainer rows/s |",
            "|---|---|---|---|",
        ]
    for name, per in results.prep.items():
        lines.append(f"| {name} | {per['rows']} | {per['trl']:.0f} | {per['masked']:.0f} |")
    lines += (
        []
        if "masked" not in results.runs
        else [
            "",
            f"`validate_batch` costs {results.validate_seconds * 1e6:.1f} µs per call on a packed homework batch; the "
            f"pre-flight pass took {statistics.median(r['preflight_seconds'] for r in results.runs['masked']):.3f} s "
            "(homework train set, once per run, inside the trainer's construction); the packing check (`packing_is_exact`,"
            f" once per `train()`) took {results.probe_seconds:.3f} s.",
        ]
    )
    if results.rss_kib:
        lines += [
            "",
            "## Peak RSS (one fresh process per contender)",
            "",
            "| contender | peak RSS MiB (median) |",
            "|---|---|",
        ]
        for key, values in results.rss_kib.items():
            lines.append(f"| {labels[key]} | {statistics.median(values) / 1024:.0f} |")
    else:
        lines += ["", "Peak RSS was not measured in this mode (`--fast` skips it)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- main


def run(
    fast: bool,
    repeats: int | None,
    out: Path | None,
    json_out: Path | None,
    rss: bool,
    model: str | None = None,
    only: list[str] | None = None,
) -> Results:
    """Train every contender `repeats` times interleaved, measure preparation and RSS, write and return the results."""
    size = replace(FAST if fast else FULL, model=model)
    repeats = repeats or size.repeats
    rows, homework_source = homework_rows(size.homework_rows)
    chat = chat_rows(size.chat_rows, short=fast)
    tokenizer = build_tokenizer(rows, chat, size.model)
    padded = homework_padded(tokenizer, rows)
    real = sum(sum(mask) for mask in padded["attention_mask"])
    chat_lengths = [len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], return_dict=False)) for r in chat]
    results = Results(
        mode="fast" if fast else "full",
        machine=machine_info(),
        data={
            "homework": homework_source,
            "homework_shape": f"{real / (128 * len(rows)):.1%} of the pad-128 positions are real tokens",
            "chat": f"{len(chat)} synthetic long-prompt conversations (system + user prompt, short assistant answer), "
            f"{min(chat_lengths)}-{max(chat_lengths)} tokens, mean {statistics.mean(chat_lengths):.0f}",
            "model": (
                f"{size.model} ({'bf16' if BF16 else 'float32'})"
                if size.model
                else f"Llama {size.layers} layers x {size.hidden} hidden, {size.heads} heads, vocabulary "
                f"{len(tokenizer)}, float32"
            )
            + ", LoRA r 8 all-linear (homework_lora_config), the same initial weights for every contender; "
            + ("GPU: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"),
            "real_tokens": {"homework": real, "chat": sum(chat_lengths)},
            "settings": f"batch {size.batch} (chat {size.chat_batch}), one epoch, learning rate 2e-4, activation "
            "checkpointing on, max_length 128 (chat 1024), seed 42 (MaskedSFTConfig's defaults, given to every "
            f"contender); {repeats} interleaved repeat(s)",
        },
    )
    all_contenders = [c for c in contenders(tokenizer, size, rows, chat) if not only or c.key in only]
    labels = {c.key: c.label for c in all_contenders}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        workdir = Path(tmp)
        for repeat in range(repeats):
            shift = repeat % len(all_contenders)
            for contender in all_contenders[shift:] + all_contenders[:shift]:
                run_, trainer = train_once(contender, tokenizer, size, workdir)
                record = asdict(run_) | {"data": contender.data}
                results.runs.setdefault(contender.key, []).append(record)
                if contender.key == "masked" and repeat == 0:
                    results.validate_seconds = validate_cost(trainer, size.validate_calls)
                    start = time.perf_counter()
                    packing_is_exact(trainer.model, pad_token_id=tokenizer.pad_token_id)
                    results.probe_seconds = time.perf_counter() - start
                print(
                    f"[repeat {repeat + 1}/{repeats}] {contender.key:16s} {run_.seconds:7.2f} s  loss {run_.loss:.6f}",
                    file=sys.__stdout__,
                    flush=True,
                )
        results.runs = {c.key: results.runs[c.key] for c in all_contenders}
        results.prep = (
            {}
            if only
            else prep_throughput(
                tokenizer,
                size,
                workdir,
                {
                    "homework prompt/completion": lambda: to_prompt_completion(rows),
                    "homework pad-128": lambda: homework_padded(tokenizer, rows),
                    "chat": lambda: Dataset.from_list(chat),
                },
            )
        )
    if rss:
        keys = [k for k in ("trl", "masked", "trl_chat", "masked_chat") if k in results.runs]
        results.rss_kib = peak_rss(keys, fast, min(repeats, 2), size.model)
    results.loss_check = loss_groups_agree(
        results.runs,
        {c.key: c.same_tokens for c in all_contenders},
        frozenset(c.key for c in all_contenders if c.reordered),
    )
    results.targets = evaluate_targets(results)
    results.machine["load_average_end"] = os.getloadavg()[0]
    text = render(results, labels)
    print(text)
    if out is not None:
        out.write_text(text + _kept_head_section(out), encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(results), indent=2) + "\n", encoding="utf-8")
    return results


# ---------------------------------------------------------------------------------------------------- the LM head


#: SmolLM2-360M's shape (from its config.json), built with random weights: a 49,152 x 960 LM head tied to the
#: embeddings. `--fast` uses a small model of the same layout.
SMOLLM2_360M = {
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
}
HEAD_FAST_SHAPE = {**SMOLLM2_360M, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
HEAD_FAST_SHAPE |= {"num_key_value_heads": 2, "vocab_size": 4096}
HEAD_CONTENDERS = {
    "trl": "trl.SFTTrainer",
    "masked": "MaskedSFTTrainer (defaults: only supervised positions through the head, packed batches)",
    "masked_full_head": "MaskedSFTTrainer, score_supervised_only=False (every position through the head; ablation)",
}
#: Contenders that train on the same tokens, per data set. On chat rows TRL also trains the newline its template
#: renders after <|im_end|> (see the main table), so there only the two MaskedSFTTrainer settings must agree.
HEAD_SAME_TOKENS = {"homework": ("trl", "masked", "masked_full_head"), "chat": ("masked", "masked_full_head")}
HEAD_MARK = "<!-- head: written by `python benchmarks/run.py --head`; a full run keeps this section -->"
HEAD_END = "<!-- /head -->"


@dataclass(frozen=True)
class HeadCase:
    """One setting of the LM-head benchmark: depth, data, batch size and timed steps (after one warm-up step)."""

    layers: int
    data: str  # "chat" (long prompts, short answers) or "homework"
    batch: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.layers} layers, {'long-prompt chat' if self.data == 'chat' else 'homework'}, batch {self.batch}"


HEAD_CASES = [
    HeadCase(4, "chat", 8, 3),
    HeadCase(4, "homework", 32, 3),
    HeadCase(32, "chat", 8, 1),
    HeadCase(32, "homework", 32, 1),
]
HEAD_FAST_CASES = [HeadCase(1, "chat", 4, 1)]  # CI smoke run, in one process (see `run_head`)


def smollm2_shaped(tokenizer, layers: int, shape: dict[str, Any]):
    """A Llama of SmolLM2-360M's shape (or `shape`) with `layers` layers, random weights, seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlamaConfig(num_hidden_layers=layers, pad_token_id=tokenizer.pad_token_id, **ids, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16) if BF16 else model


def _memory_mark(device: str) -> float:
    """Start measuring peak memory; return the memory in use now (MiB). CPU: reset the peak RSS (`VmHWM`, through
    /proc/self/clear_refs) and read `VmRSS`; CUDA: reset `max_memory_allocated` and read `memory_allocated`."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS") / 1024


def _memory_peak(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_kib("VmHWM") / 1024


def _proc_status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _head_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one contender on one case: step times, memory growth and loss (printed as JSON by `--child-head`)."""
    case, key, device, fast = HeadCase(**spec["case"]), spec["key"], spec["device"], spec["fast"]
    rows_needed = case.batch * (case.steps + 1)
    rows, _ = homework_rows(max(rows_needed, 64))
    chat = chat_rows(max(rows_needed, 64), short=fast)
    tokenizer = build_tokenizer(rows, chat)
    data = Dataset.from_list(chat[:rows_needed]) if case.data == "chat" else to_prompt_completion(rows[:rows_needed])
    model = smollm2_shaped(tokenizer, case.layers, HEAD_FAST_SHAPE if fast else SMOLLM2_360M)
    torch.manual_seed(SEED)
    model = get_peft_model(model, homework_lora_config())
    model.enable_input_require_grads()
    settings = {
        **SHARED,
        "output_dir": spec["workdir"],
        "per_device_train_batch_size": case.batch,
        "max_steps": case.steps + 1,
        "logging_steps": 1,
        "max_length": 1024 if case.data == "chat" else 128,
        "bf16": BF16,
        "use_cpu": device == "cpu",
        "label_names": ["labels"],
        "completion_only_loss": True,
    }
    with _quiet():
        if key == "trl":
            trainer = SFTTrainer(model, args=SFTConfig(**settings), train_dataset=data, processing_class=tokenizer)
        else:
            args = MaskedSFTConfig(score_supervised_only=key == "masked", **settings)
            trainer = MaskedSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
        timer, counter = _StepTimer(), _Counter()
        trainer.add_callback(timer)
        handle = model.register_forward_pre_hook(counter, with_kwargs=True)
        base = _memory_mark(device)
        output = trainer.train()
        growth = _memory_peak(device) - base
        handle.remove()
    return {
        "key": key,
        "growth_mib": growth,
        "step_seconds": timer.steps[1:],
        "warmup_seconds": timer.steps[0],
        "loss": float(output.training_loss),
        "supervised": counter.supervised_total(),
        "positions": counter.positions,
    }


def run_head(
    fast: bool,
    repeats: int | None,
    out: Path | None,
    json_out: Path | None,
    device: str = "cpu",
    layers: list[int] | None = None,
    data: list[str] | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """The LM-head benchmark (issue 14): each case's contenders, one fresh process per run, interleaved. With
    `json_out`, the raw runs are written after each one (a long run cut short keeps what it measured)."""
    cases = [
        replace(c, steps=steps or c.steps)
        for c in (HEAD_FAST_CASES if fast else HEAD_CASES)
        if fast or ((not layers or c.layers in layers) and (not data or c.data in data))
    ]
    repeats = repeats or (1 if fast else 2)
    keys = list(HEAD_CONTENDERS)
    machine = machine_info()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            per_case = runs.setdefault(case.name, {k: [] for k in keys})
            for repeat in range(repeats):
                shift = repeat % len(keys)
                for key in keys[shift:] + keys[:shift]:
                    spec = {"case": asdict(case), "key": key, "device": device, "fast": fast, "workdir": tmp}
                    if fast:  # the CI smoke run: in this process (its memory growth is only checked to be > 0)
                        record = _head_child(spec)
                    else:  # one fresh process per run, so that one contender's memory can't hide another's
                        command = [sys.executable, str(Path(__file__).resolve()), "--child-head", json.dumps(spec)]
                        command += ["--threads", str(torch.get_num_threads())]
                        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                        if done.returncode != 0:
                            raise RuntimeError(
                                f"{case.name} / {key} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
                            )
                        record = json.loads(done.stdout.strip().splitlines()[-1])
                    per_case[key].append(record)
                    if json_out is not None:
                        json_out.write_text(json.dumps({"partial": True, "runs": runs}) + "\n", encoding="utf-8")
                    print(
                        f"[{case.name} | repeat {repeat + 1}/{repeats}] {key:17s} growth {record['growth_mib']:8.0f}"
                        f" MiB  fastest step {min(record['step_seconds']):6.2f} s  loss {record['loss']:.6f}",
                        flush=True,
                    )
    summary = {name: _head_summary(name, per_case) for name, per_case in runs.items()}
    results = {
        "mode": "fast" if fast else "full",
        "device": device,
        "machine": machine,
        "shape": HEAD_FAST_SHAPE if fast else SMOLLM2_360M,
        "cases": [asdict(c) | {"name": c.name, "repeats": repeats} for c in cases],
        "runs": runs,
        "summary": summary,
    }
    results["ok"] = all(s["loss_check"]["ok"] for s in summary.values())
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    text = render_head(results)
    print(text)
    if out is not None:
        _splice_head_section(out, text)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def _head_summary(name: str, per_case: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per contender: median memory growth, fastest step, mean over the steps of each step's fastest repeat; ratios
    to `trl`; the loss check of the same-tokens contenders."""
    out: dict[str, Any] = {}
    for key, records in per_case.items():
        per_step = [min(times) for times in zip(*(r["step_seconds"] for r in records), strict=True)]
        out[key] = {
            "growth_mib": statistics.median(r["growth_mib"] for r in records),
            "fastest_step": min(per_step),
            "step": statistics.mean(per_step),
            "loss": statistics.median(r["loss"] for r in records),
            "supervised": records[0]["supervised"],
            "positions": records[0]["positions"],
        }
    for key in per_case:
        for what in ("growth_mib", "fastest_step", "step"):
            out[key][f"{what}_ratio"] = out[key][what] / out["trl"][what]
    data = "chat" if "chat" in name else "homework"
    same = HEAD_SAME_TOKENS[data]
    losses = [r["loss"] for key in same for r in per_case[key]]
    spread = max(abs(loss - losses[0]) for loss in losses) / abs(losses[0])
    counts = {key: per_case[key][0]["supervised"] for key in same}
    out["loss_check"] = {
        "contenders": list(same),
        "max_rel_loss_diff": spread,
        "supervised": counts,
        "ok": spread <= LOSS_RTOL and len(set(counts.values())) == 1,
    }
    return out


def render_head(results: dict[str, Any]) -> str:
    m, device = results["machine"], results["device"]
    memory = (
        "peak `torch.cuda.max_memory_allocated()` during `train()` minus the memory allocated before it"
        if device == "cuda"
        else "peak RSS during `train()` (`VmHWM`, reset through `/proc/self/clear_refs` just before) minus the RSS "
        "before it: the model, data and trainer are built before the mark, so this is what training adds"
    )
    shape = results["shape"]
    lines = [
        HEAD_MARK,
        "",
        "## Only supervised positions through the LM head (issue 14)",
        "",
        f"`python benchmarks/run.py --head{' --fast' if results['mode'] == 'fast' else ''}"
        f"{' --device cuda' if device == 'cuda' else ''}`: a Llama of SmolLM2-360M's shape built from its config "
        f"(hidden {shape['hidden_size']}, {shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, "
        f"intermediate {shape['intermediate_size']}, vocabulary {shape['vocab_size']:,}, tied embeddings; random "
        f"weights, {'bf16' if BF16 else 'float32'}, {device}), the homework's LoRA (r 8, all linear layers), "
        "activation checkpointing, `max_length` 1024 (chat) / 128 (homework). Each run is a fresh process; the "
        "contenders run interleaved, their order rotating each repeat. One warm-up step, then the timed steps (the "
        "same batches for every contender).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; load average "
        f"{m['load_average_start']:.2f} at start, {m['load_average_end']:.2f} at end (shared machine).",
        f"- Memory growth: {memory}.",
        "- `step s`: the mean over the timed steps of each step's fastest repeat; `fastest`: the fastest step. Timed "
        "steps and repeats per case: "
        + "; ".join(f"{c['name']}: {c['steps']} x {c.get('repeats', '?')}" for c in results["cases"])
        + ".",
        "",
        "| case | contender | memory growth MiB | × TRL | step s | × TRL | fastest s | × TRL | model positions | "
        "supervised | train loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        summary = results["summary"][case["name"]]
        for key, label in HEAD_CONTENDERS.items():
            s = summary[key]
            lines.append(
                f"| {case['name']} | {label} | {s['growth_mib']:,.0f} | {s['growth_mib_ratio']:.2f} | {s['step']:.2f} | "
                f"{s['step_ratio']:.2f} | {s['fastest_step']:.2f} | {s['fastest_step_ratio']:.2f} | "
                f"{s['positions']:,} | {s['supervised']:,} | {s['loss']:.6f} |"
            )
    lines += ["", f"Loss check (same tokens ⇒ same loss, relative tolerance {LOSS_RTOL:g}):"]
    for case in results["cases"]:
        check = results["summary"][case["name"]]["loss_check"]
        lines.append(
            f"- {case['name']}: {'passed' if check['ok'] else 'FAILED'}, max relative difference "
            f"{check['max_rel_loss_diff']:.2e} across {', '.join(check['contenders'])}; supervised tokens "
            f"{'equal' if len(set(check['supervised'].values())) == 1 else check['supervised']}."
        )
    first = results["cases"][0]["name"]
    target = results["summary"][first]["masked"]
    lines += [
        "",
        "| target (issue 14) | measured | limit | met |",
        "|---|---|---|---|",
        f"| memory growth, MaskedSFTTrainer / trl.SFTTrainer ({first}) | {target['growth_mib_ratio']:.2f} | <= 0.40 | "
        f"{'yes' if target['growth_mib_ratio'] <= 0.40 else '**no**'} |",
        f"| step time, MaskedSFTTrainer / trl.SFTTrainer ({first}) | {target['step_ratio']:.2f} | <= 0.45 | "
        f"{'yes' if target['step_ratio'] <= 0.45 else '**no**'} |",
        "",
        HEAD_END,
    ]
    return "\n".join(lines) + "\n"


def _splice_head_section(path: Path, section: str) -> None:
    """Put `section` into `path` in place of its previous LM-head section, or at the end; the rest stays."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    start, end = text.find(HEAD_MARK), text.find(HEAD_END)
    if start != -1 and end != -1:
        text = text[:start] + section.rstrip("\n") + text[end + len(HEAD_END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def _kept_head_section(path: Path | None) -> str:
    """The LM-head section of an existing RESULTS.md, for a full run to keep, or ''."""
    if path is None or not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(HEAD_MARK), text.find(HEAD_END)
    return "\n" + text[start : end + len(HEAD_END)] + "\n" if start != -1 and end != -1 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="CI smoke run: tiny sizes, one repeat, no RSS.")
    parser.add_argument("--repeats", type=int, default=None, help="Interleaved repeats (default 3, --fast 1).")
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown output (default benchmarks/RESULTS.md; --fast: none)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results as JSON here.")
    parser.add_argument("--no-rss", action="store_true", help="Skip the peak-RSS subprocesses.")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="Train only these contenders (keys, e.g. homework trl masked masked_full_head for P1); no preparation "
        "throughput; the targets whose contenders ran.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="Load this model (hub name or folder, e.g. HuggingFaceTB/SmolLM2-360M-Instruct) instead of the tiny "
        "offline Llama; on a GPU the table adds tokens/s and peak GPU memory.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for every contender (default: torch's, one per core). On a machine shared with other "
        "jobs, 1 keeps a busy core from stalling every step.",
    )
    parser.add_argument(
        "--head",
        action="store_true",
        help="The LM-head benchmark (issue 14): a SmolLM2-360M-shaped model at 4 and 32 layers, trl.SFTTrainer vs "
        "MaskedSFTTrainer with and without `score_supervised_only`; memory growth and step time. Writes its section "
        "of RESULTS.md (with --fast: a small model, no file).",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="--head: where to train.")
    parser.add_argument(
        "--layers", type=int, nargs="+", default=None, help="--head: only the cases of these depths (4, 32)."
    )
    parser.add_argument("--data", nargs="+", default=None, help="--head: only these data sets (chat, homework).")
    parser.add_argument("--steps", type=int, default=None, help="--head: timed steps per run (after the warm-up).")
    parser.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-head", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_rss:
        _child_rss(args.child_rss, args.fast, args.model)
        return 0
    if args.child_head:
        print(json.dumps(_head_child(json.loads(args.child_head))))
        return 0
    if args.head:
        out = args.out if args.out is not None else (None if args.fast else HERE / "RESULTS.md")
        return (
            0
            if run_head(args.fast, args.repeats, out, args.json, args.device, args.layers, args.data, args.steps)["ok"]
            else 1
        )
    out = args.out if args.out is not None else (None if args.fast else HERE / "RESULTS.md")
    rss = not (args.fast or args.no_rss)
    results = run(args.fast, args.repeats, out, args.json, rss=rss, model=args.model, only=args.only)
    return 0 if results.loss_check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
