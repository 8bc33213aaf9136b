"""Run by tests/test_distributed.py under `accelerate launch --config_file <DeepSpeed ZeRO-N, use_cpu>` on 2 processes.

Trains the tiny model with LoRA for 2 steps, then once more with rank 1's batches all masked. Each rank writes
`<out>/rank<r>.json`: whether DeepSpeed ran, the path the loss took, the logged losses and mask metrics, and the error
of the masked run (type, message).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trl_masked_sft import (  # noqa: E402
    DataCollatorForCompletionOnlyLM,
    MaskedSFTConfig,
    MaskedSFTTrainer,
    homework_lora_config,
)
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

out = sys.argv[1]
tokenizer = build_tiny_tokenizer()
rows = [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, 17)]


def rank() -> int:
    return torch.distributed.get_rank()


def trainer(name: str, **kwargs) -> MaskedSFTTrainer:
    config = MaskedSFTConfig(
        output_dir=os.path.join(out, name),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        disable_tqdm=True,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
    )
    return MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=homework_lora_config(r=4),
        **kwargs,
    )


def masking_collator(features):
    batch = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer)(features)
    if rank() == 1:
        batch["labels"][:] = -100
    return batch


results = {}
run = trainer("train")
run.train()
results["deepspeed"] = bool(run.is_deepspeed_enabled)
results["loss_path"] = run._msft_loss.blocker(run.model_wrapped)
keys = ("loss", "supervised_tokens", "masked_share")
results["logs"] = [{k: e[k] for k in keys} for e in run.state.log_history if "loss" in e]
try:
    trainer("masked", data_collator=masking_collator).train()
    results["masked"] = {"error": None}
except Exception as exc:  # recorded: the test checks both ranks stopped with the same error
    results["masked"] = {"error": type(exc).__name__, "message": str(exc)}
with open(os.path.join(out, f"rank{rank()}.json"), "w") as f:
    json.dump(results, f, indent=2)
