"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

Scenarios 1-3 must end with *every* rank raising the same error type (none hangs in a collective). Each rank writes
`<out>/rank<r>.json`: per scenario, the exception type, its message and the seconds it took.

1. preflight: every row's answer is truncated -> UnsupervisedRowsError; the audit runs on rank 0 only.
2. masked: only rank 1's batches are all masked -> AllMaskedBatchError on both ranks.
3. nan: only rank 1's loss is NaN at step 2 -> TrainingHealthError at step 2 on both ranks.
4. metrics: two steps of `metrics_trainer` (2 rows per rank, accumulation 2): the logged mask metrics, how many
   times each rank ran the preparation pipeline, and whether its train set was loaded from the files rank 0 saved.
   `metrics_trainer` is imported by the test for the single-process run on the same global batches.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import trl_masked_sft.pipeline as pipeline_module  # noqa: E402
from trl_masked_sft import (  # noqa: E402
    DataCollatorForCompletionOnlyLM,
    MaskedSFTConfig,
    MaskedSFTTrainer,
    PreparationPipeline,
)
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tiny_run, beside this script
from tiny_run import tiny_config, tiny_trainer  # noqa: E402

out = sys.argv[1] if __name__ == "__main__" else ""
rows = [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, 33)]
tokenizer = build_tiny_tokenizer()
METRIC_ROWS = [
    [f"Question {i}: repeat {'the digit ' * (i % 4)}now.", " " + "7" * (1 + (i * 7) % 9)] for i in range(24)
]
METRIC_KEYS = ("supervised_tokens", "masked_share", "padding_share", "num_tokens")


def metrics_trainer(output_dir: str, *, accumulation: int) -> MaskedSFTTrainer:
    """Rows of different lengths, 2 per batch, in-batch packing; with 2 processes x accumulation 2, or 1 x 4, each
    optimizer step sees the same 8 rows in the same 2-row micro-batches (accelerate hands process r batch r, r+2...)."""
    config = tiny_config(
        output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=accumulation, max_steps=2, seed=5
    )
    return tiny_trainer(config, tokenizer, METRIC_ROWS, seed=0)


def config(name: str, **overrides) -> MaskedSFTConfig:
    return tiny_config(os.path.join(out, name), **{"per_device_train_batch_size": 4, "max_steps": 4, **overrides})


# Count the pre-flight audits each rank computes (the pipeline runs them through `run_on_main`).
audits = []
_run_on_main = pipeline_module.run_on_main


def counting_run_on_main(fn):
    def counted():
        audits.append(1)
        return fn()

    return _run_on_main(counted)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def masking_collator(features):
    batch = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer)(features)
    if rank() == 1:
        batch["labels"][:] = -100
    return batch


def scenario_preflight():
    model = build_tiny_model(tokenizer)
    MaskedSFTTrainer(model, args=config("preflight", max_length=6), train_dataset=rows, processing_class=tokenizer)


def scenario_masked():
    tiny_trainer(config("masked"), tokenizer, rows, data_collator=masking_collator).train()


def scenario_nan():
    trainer = tiny_trainer(config("nan"), tokenizer, rows)

    def hook(module, args, output):
        return output * float("nan") if rank() == 1 and trainer.state.global_step + 1 == 2 else output

    trainer.model.get_input_embeddings().register_forward_hook(hook)
    trainer.train()


def scenario_metrics() -> dict:
    prepared = []
    prepare = PreparationPipeline.prepare

    def counting_prepare(self, *args, **kwargs):
        prepared.append(1)
        return prepare(self, *args, **kwargs)

    PreparationPipeline.prepare = counting_prepare
    try:
        trainer = metrics_trainer(os.path.join(out, "metrics"), accumulation=2)
    finally:
        PreparationPipeline.prepare = prepare
    trainer.train()
    logs = [{k: e[k] for k in METRIC_KEYS} for e in trainer.state.log_history if "loss" in e]
    return {"logs": logs, "prepared": len(prepared), "loaded_from_files": bool(trainer.train_dataset.cache_files)}


if __name__ == "__main__":
    pipeline_module.run_on_main = counting_run_on_main
    results = {}
    for name, run in (("preflight", scenario_preflight), ("masked", scenario_masked), ("nan", scenario_nan)):
        start = time.monotonic()
        try:
            run()
            results[name] = {"error": None, "seconds": time.monotonic() - start}
        except Exception as exc:  # recorded for the test, which checks every rank raised the same error
            results[name] = {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - start}
        if name == "preflight":
            results[name]["audits"] = len(audits)
    results["metrics"] = scenario_metrics()
    results["world_size"] = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    with open(os.path.join(out, f"rank{rank()}.json"), "w") as f:
        json.dump(results, f, indent=2)
