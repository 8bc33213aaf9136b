"""Run by tests/test_resume.py as two torchrun "nodes" of one process each (`--nnodes 2 --node_rank 0|1`, gloo on CPU),
each with its own `output_dir` (`<out>/<scenario>/node<r>`), as two machines without shared storage.

1. per_node: `save_on_each_node=True`, 4 steps saved every 2; resume with `resume_from_checkpoint=True` to step 6.
2. lagging: the same, then node 1 loses its checkpoint-4 (a copy cut short): every rank resumes from checkpoint-2.
3. main_only: `save_on_each_node=False`: node 1 holds no complete checkpoint; every rank raises one CheckpointError.

Each rank writes `<out>/rank<r>.json`: per scenario, the checkpoint it resumed from (the path's last part), the
steps it logged, its last step, or the error type and message.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trl_masked_sft import MaskedSFTTrainer  # noqa: E402
from trl_masked_sft.tiny import build_tiny_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tiny_run, beside this script
from tiny_run import HOMEWORK_ROWS, tiny_config, tiny_trainer  # noqa: E402

out = sys.argv[1]
node = int(os.environ["GROUP_RANK"])
tokenizer = build_tiny_tokenizer()
rows = HOMEWORK_ROWS


def trainer(scenario: str, max_steps: int, **overrides) -> MaskedSFTTrainer:
    config = tiny_config(
        os.path.join(out, scenario, f"node{node}"),
        per_device_train_batch_size=2,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=None,
        seed=3,
        **overrides,
    )
    return tiny_trainer(config, tokenizer, rows, seed=0)


def resume(scenario: str, **overrides) -> dict:
    run = trainer(scenario, 6, **overrides)
    chosen = {}
    load = run._load_from_checkpoint

    def record(path, model=None):
        chosen["path"] = os.path.basename(path)
        return load(path, model)

    run._load_from_checkpoint = record
    try:
        run.train(resume_from_checkpoint=True)
    except Exception as exc:  # recorded: the test checks every rank raised the same error
        return {"error": type(exc).__name__, "message": str(exc)}
    steps = [entry["step"] for entry in run.state.log_history if "loss" in entry]
    return {"resumed_from": chosen.get("path"), "steps": steps, "last_step": run.state.global_step}


results = {}
trainer("per_node", 4, save_on_each_node=True).train()
results["per_node"] = resume("per_node", save_on_each_node=True)

trainer("lagging", 4, save_on_each_node=True).train()
torch.distributed.barrier()
if node == 1:
    os.remove(os.path.join(out, "lagging", "node1", "checkpoint-4", "trainer_state.json"))
torch.distributed.barrier()
results["lagging"] = resume("lagging", save_on_each_node=True)

trainer("main_only", 2).train()
results["main_only"] = resume("main_only")
shutil.rmtree(os.path.join(out, "per_node", f"node{node}"), ignore_errors=True)
results["node"] = node
with open(os.path.join(out, f"rank{torch.distributed.get_rank()}.json"), "w") as f:
    json.dump(results, f, indent=2)
