"""Mask metrics: what each batch trains on, as scalars for TensorBoard (and any `report_to` logger).

- `batch_mask_stats(batch)`: counts of one collated batch — positions, real (non-padding) tokens, supervised tokens
  (labels other than `ignore_index` after the causal shift, as `Trainer` counts `num_items_in_batch`).
- `MaskMetrics`: sums those counts per mode (`"train"`, `"eval"`) between two logs; `pop` returns the scalars:

  | name | meaning |
  |---|---|
  | `supervised_tokens` | supervised tokens per optimizer step (train) or per batch (eval), mean since the last log |
  | `masked_share` | share of the real tokens that are not trained (prompt, template, other turns), token-weighted |
  | `padding_share` | share of the batch positions that are padding (after in-batch packing), token-weighted |
  | `rows_dropped` | rows the pre-flight audit dropped (`masked_row_policy`) from that split |

  Train logs are named as is (TensorBoard: `train/supervised_tokens`), eval logs with `eval_` (`eval/...`).
- `audit_logs(report)`: the pre-flight `AuditReport` as scalars `audit/...`, to be logged once.
- `write_audit_text(callbacks, report, step)`: its summary into TensorBoard's text tab (`train/audit/summary`), once.
  The summary is no log-dict entry: the console shows it once, from the pre-flight log, and a console logger would
  print a long string as `[String too long to display...]`.

Under several processes, `pop(..., reduce=distributed.sum_across_ranks)` sums the counts of every rank first (one
all-reduce per log, on every rank), so the scalars describe the whole global batch, not rank 0's share of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .masking import IGNORE_INDEX
from .packing import PACKED_TOKENS_KEY

__all__ = ["BatchMaskStats", "MaskMetrics", "audit_logs", "batch_mask_stats", "write_audit_text"]

_MODES = ("train", "eval")


@dataclass(frozen=True)
class BatchMaskStats:
    """Counts of one collated batch."""

    #: all positions of the batch (rows x width), padding included
    positions: int
    #: positions holding a real token (not padding)
    real_tokens: int
    #: labels that are trained after the causal shift
    supervised_tokens: int

    def __post_init__(self):
        if not (0 <= self.supervised_tokens <= self.positions and 0 <= self.real_tokens <= self.positions):
            raise ValueError(
                "Batch counts must lie between 0 and `positions`, got "
                f"supervised_tokens={self.supervised_tokens}, real_tokens={self.real_tokens}, "
                f"positions={self.positions}."
            )


def batch_mask_stats(
    batch: Mapping[str, Any], *, ignore_index: int = IGNORE_INDEX, real_tokens: int | None = None
) -> BatchMaskStats:
    """Count the positions, real tokens and supervised tokens of one collated batch (`input_ids` and `labels`).

    Real tokens are, in this order: `real_tokens` when given (e.g. the count a packing collator returns), the batch's
    `msft_packed_tokens`, the sum of its `attention_mask`, or every position (a padding-free batch has no padding).
    Supervised tokens are `labels[..., 1:] != ignore_index` (the first position is never a target), or
    `shift_labels != ignore_index` when the collator provides shifted labels.
    """
    if "input_ids" not in batch or "labels" not in batch:
        raise ValueError(
            f"`batch_mask_stats` needs a collated batch with `input_ids` and `labels`, got keys {sorted(batch)}."
        )
    input_ids = torch.as_tensor(batch["input_ids"])
    if "shift_labels" in batch:
        targets = torch.as_tensor(batch["shift_labels"])
    else:
        targets = torch.as_tensor(batch["labels"])[..., 1:]
    counts = [targets.ne(ignore_index).sum()]
    if real_tokens is None:
        real_tokens = batch.get(PACKED_TOKENS_KEY)
    if real_tokens is None and batch.get("attention_mask") is not None:
        counts.append(torch.as_tensor(batch["attention_mask"]).sum())
    values = torch.stack([c.to("cpu", torch.long) for c in counts]).tolist()  # one host copy
    if real_tokens is None:
        real_tokens = values[1] if len(values) > 1 else input_ids.numel()
    return BatchMaskStats(positions=input_ids.numel(), real_tokens=int(real_tokens), supervised_tokens=values[0])


class MaskMetrics:
    """Sums `BatchMaskStats` per mode between logs and turns them into the scalars to log.

    Usage in a trainer: `add(batch_mask_stats(inputs), mode)` for every batch the loss is computed on, and
    `logs.update(pop(mode, global_step=...))` in `log()`. `rows_dropped[mode]` holds the pre-flight audit's drops.
    """

    def __init__(self) -> None:
        self.rows_dropped: dict[str, int] = {}
        self._sums: dict[str, list[int]] = {mode: [0, 0, 0, 0] for mode in _MODES}
        self._last_step: dict[str, int] = {mode: 0 for mode in _MODES}

    def _check_mode(self, mode: str) -> None:
        if mode not in _MODES:
            raise ValueError(f"`mode` must be 'train' or 'eval', got {mode!r}.")

    def add(self, stats: BatchMaskStats, mode: str = "train") -> None:
        """Count one batch."""
        self._check_mode(mode)
        sums = self._sums[mode]
        sums[0] += 1
        sums[1] += stats.positions
        sums[2] += stats.real_tokens
        sums[3] += stats.supervised_tokens

    def pop(
        self,
        mode: str = "train",
        *,
        global_step: int | None = None,
        reduce: Callable[[list[float]], list[float]] | None = None,
    ) -> dict[str, float]:
        """The scalars of the batches counted since the last `pop` of `mode`, then reset; `{}` when none.

        With `global_step` (train), `supervised_tokens` is per optimizer step since the previous `pop` with a step,
        so gradient accumulation sums its micro-batches; without it, per batch. Eval names start with `eval_`.
        `reduce` sums the counts across processes (a collective: every rank calls `pop` at the same point); the
        scalars are then those of the global batch (per step: all ranks' micro-batches; per batch: one per rank).
        """
        self._check_mode(mode)
        counts = [*self._sums[mode], 1]  # the last one counts the processes
        if reduce is not None:
            counts = [round(value) for value in reduce(counts)]
        batches, positions, real, supervised, ranks = counts
        if batches == 0:
            return {}
        per = batches / ranks
        if global_step is not None:
            per = max(1, global_step - self._last_step[mode])
            self._last_step[mode] = global_step
        self._sums[mode] = [0, 0, 0, 0]
        scalars = {
            "supervised_tokens": supervised / per,
            "masked_share": max(0.0, 1.0 - supervised / real) if real else 1.0,
            "padding_share": (positions - real) / positions if positions else 0.0,
        }
        if mode in self.rows_dropped:
            scalars["rows_dropped"] = float(self.rows_dropped[mode])
        prefix = "eval_" if mode == "eval" else ""
        return {prefix + name: value for name, value in scalars.items()}


def audit_logs(report) -> dict[str, float]:
    """An `AuditReport`'s numbers as `audit/...` scalars, to be logged once through `Trainer.log`."""
    names = (
        "rows",
        "rows_fully_masked",
        "rows_completion_truncated",
        "rows_stop_token_not_supervised",
        "rows_stop_token_truncated",
        "rows_merged_boundary",
        "rows_dropped",
        "supervised_tokens_min",
        "supervised_tokens_median",
        "supervised_tokens_max",
        "supervised_token_share",
    )
    logs = {f"audit/{name}": float(getattr(report, name)) for name in names}
    for key, value in (getattr(report, "token_weights", None) or {}).items():  # only when a message has a weight
        logs[f"audit/token_weight_{key}"] = float(value)
    return logs


def write_audit_text(callbacks, report, step: int) -> None:
    """Write `report.summary()` to the text tab of every TensorBoard writer among `callbacks` (transformers'
    `TensorBoardCallback` holds one, on the main process only, once training has begun)."""
    for callback in callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            writer.add_text("train/audit/summary", report.summary(), step)
            writer.flush()
