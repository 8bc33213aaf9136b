"""The benchmark's cases: how big each run is, the data it trains on, and the model shapes of the `--head` mode.

- `Size` (`FULL`, `FAST`): the main comparison's model, rows, batches and repeats;
- the data: the homework's rows (`homework_rows`: `../shared/data/unit_conversion/train.json` beside the repository,
  else generated questions), the synthetic long-prompt chat set (`chat_rows`), the homework's own pad-128 rows
  (`homework_padded`) and the tokenizer trained on them (`build_tokenizer`);
- `HeadCase` (`HEAD_CASES`, `HEAD_FAST_CASES`): the LM-head benchmark's depth, data, batch and steps, on a model of
  SmolLM2-360M's shape (`SMOLLM2_360M`).

Imported by `run.py`, which puts this checkout's package and `examples/` first on `sys.path`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from homework import generate_rows

from trl_masked_sft.formats import format_answer
from trl_masked_sft.tiny import build_tiny_tokenizer

#: The homework's data, beside the repository (CI and this workspace have it at ../shared); absent elsewhere.
HOMEWORK_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "unit_conversion" / "train.json"


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


# ---------------------------------------------------------------------------------------------------- the real model


@dataclass(frozen=True)
class RealCase:
    """The real-model case (`--real`): rows per optimizer step, timed steps (after one warm-up step), repeats, and the
    rows: the homework's (`max_length` 128) or long ones (`--long`: about `LONG_TOKENS` tokens each, max_length 1024)."""

    batch: int
    steps: int
    repeats: int
    data: str = "homework"
    max_length: int = 128

    @property
    def rows(self) -> int:
        """Rows trained in one run: one epoch of exactly the warm-up and the timed steps."""
        return self.batch * (self.steps + 1)


#: 32 homework rows a step (the homework's batch, `MaskedSFTConfig`'s default), four timed steps, two repeats.
REAL_CASE = RealCase(batch=32, steps=4, repeats=2)
#: The smoke run (`--real --fast`): four rows a step, one timed step, in one process.
REAL_FAST_CASE = RealCase(batch=4, steps=1, repeats=1)
#: Long rows (`--real --long`, issue 25): 8 rows of about 580 tokens a step, max_length 1024, one timed step.
REAL_LONG_CASE = RealCase(batch=8, steps=1, repeats=1, data="long", max_length=1024)
#: Its smoke run: two long rows a step, one timed step.
REAL_LONG_FAST_CASE = RealCase(batch=2, steps=1, repeats=1, data="long", max_length=1024)
#: The long rows' prompt length in tokens (the completion adds a few), varied by up to ±`LONG_SPREAD`.
LONG_TOKENS, LONG_SPREAD = 580, 20


def long_rows(tokenizer, n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` prompt/completion rows whose prompts are `LONG_TOKENS` ± `LONG_SPREAD` tokens of the filler text (cut
    with `tokenizer`), each ending in a homework question; the completion is its `<answer>…</answer>`."""
    rng = random.Random(seed)
    questions = generate_rows(n, seed=seed)
    rows = []
    for question, answer in questions:
        words = " ".join(rng.choice(_FILLER) for _ in range(LONG_TOKENS))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        length = LONG_TOKENS + rng.randint(-LONG_SPREAD, LONG_SPREAD) - len(tokenizer(question)["input_ids"])
        prompt = tokenizer.decode(ids[:length]) + " " + question
        rows.append({"prompt": prompt, "completion": " " + format_answer(answer)})
    return rows
