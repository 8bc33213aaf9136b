"""Real chat templates of model families TRL does not ship, each with a tokenizer that has that family's special
tokens (see tests/data/chat_templates/README.md for where each template comes from).

The tokenizers are byte-level BPEs trained here on the templates' own text, so nothing is downloaded: what matters to
masking is which strings are special tokens (bos, eos, turn markers), and those are the family's.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
#: family -> {"bos", "eos", "special": [...], "model"}
FAMILIES: dict[str, dict] = json.loads((TEMPLATES / "families.json").read_text(encoding="utf-8"))
TEXT = "Answer briefly. How many grams in 2 kg? That is 2000 grams. And in 3 kg? That is 3000 grams."


def read_template(family: str) -> str:
    return (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")


def byte_level_tokenizer(bos: str, eos: str, special=(), texts=(TEXT,)) -> PreTrainedTokenizerFast:
    """A small byte-level BPE whose special tokens are exactly `bos`, `eos` and `special` (bos may equal eos)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=sorted({bos, eos, *special}),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos)


@cache
def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The family's tokenizer with the family's real chat template."""
    spec, template = FAMILIES[family], read_template(family)
    tokenizer = byte_level_tokenizer(spec["bos"], spec["eos"], spec["special"], (template, TEXT))
    tokenizer.chat_template = template
    return tokenizer


def trained_runs(tokenizer, mask) -> list[str]:
    """The trained pieces of a mask, one string per contiguous run of trained labels."""
    return trained_spans(tokenizer, mask.input_ids, mask.labels)


def trained_spans(tokenizer, input_ids, labels) -> list[str]:
    """The trained pieces of a row's `input_ids`, one string per contiguous run of `labels` that are not -100."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])
