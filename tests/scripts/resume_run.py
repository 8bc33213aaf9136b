"""The run of tests/test_resume.py: `build_trainer(output_dir)` is shared; run as a script, it trains and is killed.

As a script (`python resume_run.py OUTPUT_DIR`) it SIGKILLs itself while saving checkpoint-9, after the weights and
optimizer are written and before `trainer_state.json` is: the partial checkpoint a crash during saving leaves.
16 rows at batch 4 are 4 steps per epoch, so checkpoint-6 (the last complete one) is in the middle of epoch 2.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import TrainerState  # noqa: E402

from trl_masked_sft import MaskedSFTTrainer, homework_lora_config  # noqa: E402
from trl_masked_sft.tiny import build_tiny_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tiny_run, beside this script
from tiny_run import HOMEWORK_ROWS, tiny_config, tiny_trainer  # noqa: E402

KILL_WHILE_SAVING_STEP = 9
MAX_STEPS = 10


def build_trainer(output_dir: str) -> MaskedSFTTrainer:
    """A LoRA run of 10 steps over 2.5 epochs, checkpoints every 3 steps, everything seeded."""
    torch.set_num_threads(1)  # the same reduction order in the test process and in the subprocess
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(
        output_dir,
        per_device_train_batch_size=4,
        max_steps=MAX_STEPS,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=3,
        save_total_limit=None,
        seed=7,
    )
    # dropout: the RNG state must be restored too
    return tiny_trainer(config, tokenizer, HOMEWORK_ROWS, lora=homework_lora_config(r=4, lora_dropout=0.1))


if __name__ == "__main__":
    save_to_json = TrainerState.save_to_json

    def die_while_saving(self, json_path):
        if self.global_step == KILL_WHILE_SAVING_STEP and os.path.basename(json_path) == "trainer_state.json":
            os.kill(os.getpid(), signal.SIGKILL)
        return save_to_json(self, json_path)

    TrainerState.save_to_json = die_while_saving
    build_trainer(sys.argv[1]).train()
