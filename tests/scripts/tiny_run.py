"""The tiny run the scripts of tests/scripts train: homework-style rows, a CPU config without logging or
progress bars, and a `MaskedSFTTrainer` on a fresh tiny model with a LoRA adapter (r=4).

Each script imports it from its own folder (`sys.path` holds the folder when run; a test that loads a script by path
puts it there first).
"""

from __future__ import annotations

import torch

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, homework_lora_config
from trl_masked_sft.tiny import build_tiny_model

#: 16 rows `[question, answer]` in the homework's format
HOMEWORK_ROWS = [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, 17)]


def tiny_config(output_dir: str, **settings) -> MaskedSFTConfig:
    """A CPU config that logs every step and writes nothing unless `settings` say so (`save_strategy`, ...)."""
    defaults = {
        "output_dir": output_dir,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "activation_checkpointing": False,
        "dataloader_pin_memory": False,
    }
    return MaskedSFTConfig(**{**defaults, **settings})


def tiny_trainer(config, tokenizer, rows, *, seed: int | None = None, lora=None, **kwargs) -> MaskedSFTTrainer:
    """A trainer of a fresh tiny model with a LoRA adapter (`lora`, default r=4) on `rows`; `seed` seeds torch first."""
    if seed is not None:
        torch.manual_seed(seed)
    return MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=lora or homework_lora_config(r=4),
        **kwargs,
    )
