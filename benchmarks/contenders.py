"""The contenders: each way of training the benchmark compares, built from the same model and data.

- the main comparison (`contenders`): the homework's own pattern, `trl.SFTTrainer` and `MaskedSFTTrainer` on the same
  homework rows, with their ablations, and both trainers on the long-prompt chat set;
- the `--head` mode (`HEAD_CONTENDERS`, `head_trainer`): `trl.SFTTrainer` and `MaskedSFTTrainer` with and without
  `score_supervised_only`, on a model of SmolLM2-360M's shape (`smollm2_shaped`).

Every contender gets the same initial weights (`make_model`, `smollm2_shaped`: seeded) and the homework's LoRA.
Imported by `run.py`, which puts this checkout's package and `examples/` first on `sys.path`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from cases import Size, homework_padded
from datasets import Dataset
from harness import BF16, SEED
from homework import to_prompt_completion
from peft import get_peft_model
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.tiny import build_tiny_model

#: The name `TrainingArguments` gives activation checkpointing: transformers 4.x knows only `gradient_checkpointing`.
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)
#: The homework's training settings, which are MaskedSFTConfig's defaults, given explicitly to every contender so
#: that all train alike; one epoch; no TensorBoard, no checkpoints.
SHARED = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1,
    CHECKPOINTING: True,
    "logging_steps": 10,
    "report_to": "none",
    "save_strategy": "no",
    "seed": SEED,
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
}


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
    return with_lora(base)


def with_lora(base):
    """`base` with the homework's LoRA adapter, seeded (the same for every contender), ready for activation
    checkpointing with a frozen base as the homework does (`enable_input_require_grads`)."""
    torch.manual_seed(SEED)
    model = get_peft_model(base, homework_lora_config())
    model.enable_input_require_grads()
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
        settings = {k: v for k, v in SHARED.items() if k not in ("learning_rate", CHECKPOINTING, "logging_steps")}
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
    # transformers 4.x names the length-grouped sampler `group_by_length=True`
    fields = TrainingArguments.__dataclass_fields__
    grouped = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in fields
        else {"group_by_length": True}
    )
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


# ---------------------------------------------------------------------------------------------------- the LM head


HEAD_CONTENDERS = {
    "trl": "trl.SFTTrainer",
    "masked": "MaskedSFTTrainer (defaults: only supervised positions through the head, packed batches)",
    "masked_full_head": "MaskedSFTTrainer, score_supervised_only=False (every position through the head; ablation)",
}
#: Contenders that train on the same tokens, per data set. On chat rows TRL also trains the newline its template
#: renders after <|im_end|> (see the main table), so there only the two MaskedSFTTrainer settings must agree.
HEAD_SAME_TOKENS = {"homework": ("trl", "masked", "masked_full_head"), "chat": ("masked", "masked_full_head")}


def smollm2_shaped(tokenizer, layers: int, shape: dict[str, Any]):
    """A Llama of SmolLM2-360M's shape (or `shape`) with `layers` layers, random weights, seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlamaConfig(num_hidden_layers=layers, pad_token_id=tokenizer.pad_token_id, **ids, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16) if BF16 else model


def head_model(tokenizer, layers: int, shape: dict[str, Any]):
    """`smollm2_shaped` with the homework's LoRA adapter (seeded), ready for activation checkpointing."""
    return with_lora(smollm2_shaped(tokenizer, layers, shape))


def head_trainer(key: str, model, data, tokenizer, settings: dict[str, Any]):
    """The `--head` contender `key` (a `HEAD_CONTENDERS` key) on `data`, with the same `settings` for every one."""
    if key == "trl":
        return SFTTrainer(model, args=SFTConfig(**settings), train_dataset=data, processing_class=tokenizer)
    args = MaskedSFTConfig(score_supervised_only=key == "masked", **settings)
    return MaskedSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------------- the real model


REAL_CONTENDERS = {
    "masked": "MaskedSFTTrainer, MaskedSFTConfig defaults",
    "masked_autocast": "MaskedSFTTrainer, `frozen_weights_bf16=False` (autocast casts the frozen float32 weights at "
    "every product; ablation)",
    "trl_bf16": "trl.SFTTrainer, bf16 autocast (`bf16=True, use_cpu=True`), activation checkpointing off",
    "trl_fp32": "trl.SFTTrainer, float32, activation checkpointing off",
    "trl_defaults": "trl.SFTTrainer, SFTConfig defaults with `use_cpu=True` (reference)",
}
#: `trl.SFTTrainer`'s candidates for its best settings on this CPU; the report picks the faster one that trains as
#: float32 does (`report.real_summary`).
REAL_TRL_CANDIDATES = ("trl_bf16", "trl_fp32")
#: The float32 reference whose loss curve the others are compared with.
REAL_REFERENCE = "trl_fp32"
REAL_FAST_CONTENDERS = ("masked", "masked_autocast", "trl_bf16", "trl_fp32")
#: Long rows (`--long`, issue 25): the defaults (checkpointing decided by the memory estimate), the same with
#: checkpointing forced off (the CPU default before), and TRL's defaults (checkpointing on).
REAL_LONG_CONTENDERS = {
    "masked": "MaskedSFTTrainer, MaskedSFTConfig defaults (checkpointing from the memory estimate)",
    "masked_ckpt_off": "MaskedSFTTrainer, `activation_checkpointing=False` (the CPU default before issue 25)",
    "trl_defaults": "trl.SFTTrainer, SFTConfig defaults with `use_cpu=True` (bf16, checkpointing on)",
}
#: The profiled runs (`--profile`): MaskedSFTTrainer with and without the frozen weights in bfloat16.
PROFILE_CONTENDERS = ("masked", "masked_autocast")
#: What each `masked*` key changes from MaskedSFTConfig's defaults.
MASKED_VARIANTS: dict[str, dict[str, Any]] = {
    "masked": {},
    "masked_autocast": {"frozen_weights_bf16": False},
    "masked_ckpt_off": {"activation_checkpointing": False},
}


def real_model(base):
    """A copy of the real `base` model with the homework's LoRA adapter (seeded: the same for every contender)."""
    return with_lora(copy.deepcopy(base))


def real_trainer(key: str, model, data, tokenizer, output_dir: str, batch: int, max_steps: int, max_length: int = 128):
    """The real-model contender `key` (a `REAL_CONTENDERS` key) on `data`.

    Every contender sets only what runs the benchmark (output, logging every step, no saving, `max_steps`, seed) and
    the rows per step; `MaskedSFTTrainer` keeps every other `MaskedSFTConfig` default (its precision and activation
    checkpointing are read back from `trainer.args` by the report). `trl_bf16` and `trl_fp32` are TRL with the
    homework's learning rate and `max_length` and checkpointing off; `trl_defaults` keeps SFTConfig's defaults.
    """
    run = {
        "output_dir": output_dir,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "max_steps": max_steps,
        "seed": SEED,
    }
    if key in MASKED_VARIANTS:
        default_batch = MaskedSFTConfig.__dataclass_fields__["per_device_train_batch_size"].default
        if batch != default_batch:  # the smoke run's smaller steps; the full case uses the default, 32
            run["per_device_train_batch_size"] = batch
        if max_length != MaskedSFTConfig.__dataclass_fields__["max_length"].default:  # long rows
            run["max_length"] = max_length
        args = MaskedSFTConfig(**run, **MASKED_VARIANTS[key])
        return MaskedSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
    run |= {"per_device_train_batch_size": batch, "use_cpu": True}
    if key != "trl_defaults":  # SFTConfig's defaults: max_length 1024, bf16, checkpointing on, lr 2e-5
        run |= {"learning_rate": 2e-4, "max_length": max_length, "bf16": key == "trl_bf16"}
        run["gradient_checkpointing"] = False
    return SFTTrainer(model, args=SFTConfig(**run), train_dataset=data, processing_class=tokenizer)
