"""Run by tests/test_loss.py under `accelerate launch --num_processes 2 --cpu`: the supervised-only loss under DDP.

Trains three steps with `score_supervised_only` on and off from the same weights (LoRA, gradient accumulation 2,
in-batch packing) and writes `<out>/rank<r>.json`: per setting, the logged losses, grad norms, metrics and the
adapter weights, so the test can compare the two paths and the two ranks.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trl_masked_sft.tiny import build_tiny_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tiny_run, beside this script
from tiny_run import tiny_config, tiny_trainer  # noqa: E402

out = sys.argv[1]
tokenizer = build_tiny_tokenizer()
rows = [
    [f"Question {i}: repeat the digit {'please ' * (i % 5)}now.", " " + "7" * (1 + (i * 7) % 9)] for i in range(48)
]


def run(on: bool) -> dict:
    config = tiny_config(
        os.path.join(out, str(on)),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        optim="sgd",
        learning_rate=1e-3,
        seed=1,
        score_supervised_only=on,
    )
    trainer = tiny_trainer(config, tokenizer, rows, seed=0)
    trainer.train()
    keys = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")
    logs = [{k: e[k] for k in keys} for e in trainer.state.log_history if "loss" in e]
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])
    return {
        "logs": logs,
        "weights": weights.tolist(),
        "path": trainer._msft_loss.blocker(trainer.model),
    }


results = {"rank": int(os.environ.get("RANK", 0)), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
results["on"], results["off"] = run(True), run(False)
with open(os.path.join(out, f"rank{results['rank']}.json"), "w") as f:
    json.dump(results, f)
