"""Run by tests/test_weights.py under `accelerate launch --num_processes 2 --cpu` (and once in the test's own process):
weighted rows trained three steps with accumulation 2, in the data's order; writes `<out>/rank<r>.json` with the logged
losses and the adapter weights, so the test can compare 2 processes × 4 rows with 1 process × 8 rows.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses  # noqa: E402

import torch  # noqa: E402

from trl_masked_sft import MaskedSFTConfig, MaskedSFTTrainer, homework_lora_config  # noqa: E402
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

WEIGHTS = (0.5, 2.0, None, 1.5, 0.25, 3.0, None, 1.0)


def rows(n: int = 48) -> list[dict]:
    out = []
    for i in range(n):
        reply = {"role": "assistant", "content": "7" * (1 + (i * 7) % 9)}
        if WEIGHTS[i % len(WEIGHTS)] is not None:
            reply["weight"] = WEIGHTS[i % len(WEIGHTS)]
        out.append({"messages": [{"role": "user", "content": f"Question {i}: repeat {'please ' * (i % 5)}."}, reply]})
    return out


#: transformers 5.x's `train_sampling_strategy="sequential"`; 4.x has no such field and always shuffles (RandomSampler).
SEQUENTIAL = "train_sampling_strategy" in {f.name for f in dataclasses.fields(MaskedSFTConfig)}


class InDataOrder(MaskedSFTTrainer):
    """On transformers 4.x: the rows in the data's order, as `train_sampling_strategy="sequential"` gives on 5.x."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def run(out: str, batch_size: int) -> dict:
    tokenizer = build_tiny_tokenizer()
    config = MaskedSFTConfig(
        output_dir=out,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=2,
        max_steps=3,
        logging_steps=1,
        disable_tqdm=True,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
        optim="sgd",
        learning_rate=1e-2,
        seed=1,
        shuffle_dataset=False,
        **({"train_sampling_strategy": "sequential"} if SEQUENTIAL else {}),
    )
    torch.manual_seed(0)
    trainer = (MaskedSFTTrainer if SEQUENTIAL else InDataOrder)(
        build_tiny_model(tokenizer),
        args=config,
        train_dataset=rows(),
        processing_class=tokenizer,
        peft_config=homework_lora_config(r=4),
    )
    trainer.train()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])
    return {
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "weights": weights.tolist(),
        "world_size": trainer.args.world_size,
    }


if __name__ == "__main__":
    result = run(os.path.join(sys.argv[1], "ddp"), batch_size=4)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
