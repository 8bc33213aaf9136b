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

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTTrainer  # noqa: E402
from trl_masked_sft.tiny import build_tiny_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tiny_run, beside this script
from tiny_run import HOMEWORK_ROWS, tiny_config, tiny_trainer  # noqa: E402

out = sys.argv[1]
tokenizer = build_tiny_tokenizer()
rows = HOMEWORK_ROWS


def rank() -> int:
    return torch.distributed.get_rank()


def trainer(name: str, **kwargs) -> MaskedSFTTrainer:
    config = tiny_config(os.path.join(out, name), per_device_train_batch_size=2, max_steps=2)
    return tiny_trainer(config, tokenizer, rows, **kwargs)


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
