"""The benchmark's report: what a run measured, checked and written as RESULTS.md.

- the main comparison: `Results`, `best_epoch` (each step's fastest repeat, summed), `paired_ratios`,
  `loss_groups_agree` (same tokens ⇒ same loss), `evaluate_targets` (P1-P5) and `render`;
- the `--head` mode: `head_summary` and `render_head`, a section between `HEAD_MARK` and `HEAD_END`;
- sections that other modes write into RESULTS.md are spliced in place (`splice_section`) and kept by a full run
  (`kept_sections`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contenders import HEAD_CONTENDERS, HEAD_SAME_TOKENS
from harness import BF16

#: Losses of contenders that train on the same tokens may differ by float32 rounding only.
LOSS_RTOL = 1e-4
HEAD_MARK = "<!-- head: written by `python benchmarks/run.py --head`; a full run keeps this section -->"
HEAD_END = "<!-- /head -->"


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
        ("P1", "epoch time, MaskedSFTTrainer / homework pattern", "masked", "homework", 0.17),
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (homework)", "masked", "trl", 1.00),
        ("P2", "epoch time, MaskedSFTTrainer / trl.SFTTrainer (long-prompt chat)", "masked_chat", "trl_chat", 1.00),
        ("P3", "epoch time on pad-128 rows, MaskedSFTTrainer / trl.SFTTrainer", "masked_padded", "trl_padded", 0.25),
    ]
    rows = [ratio_row(*row) for row in ratios if row[2] in results.runs and row[3] in results.runs]
    if "masked_full_head" in results.runs and "masked" in results.runs:
        head = paired_ratios(results, "masked", "masked_full_head")
        rows.append(
            {
                "target": "P1",
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
