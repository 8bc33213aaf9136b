"""How long a run is: the optimizer steps a training dataset gives and the batches an evaluation dataset gives.

Checked before training, so that a configuration giving no optimizer step is refused with its numbers, where
transformers would end the run at step 0 (`max_steps` set) or fail on "args.max_steps must be set to a positive
value" (epochs), and an evaluation dataset giving no batch is refused where `evaluate` would report no loss.

The counts follow transformers 5.x and accelerate: a map-style dataset is cut into batches of
`per_device_*_batch_size` (the last, partial one dropped with `dataloader_drop_last=True`), and the batches are
dealt to the processes (each gets `batches // world_size` when dropping, else the even share rounded up); a partial
gradient accumulation still makes a step. A streamed dataset is not cut that way (its last partial batch is kept),
so it gives no step only when it gives no row.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from .errors import ConfigError

__all__ = ["batches_per_process", "check_run_length", "check_stream_kept_rows"]


def batches_per_process(rows: int, batch_size: int, world_size: int, drop_last: bool, split_batches: bool) -> int:
    """Batches each process's dataloader gives in one pass over `rows` map-style rows."""
    batches = rows // batch_size if drop_last else math.ceil(rows / batch_size)
    if world_size <= 1 or split_batches:  # with `split_batches`, one batch is shared out across the processes
        return batches
    return batches // world_size if drop_last else math.ceil(batches / world_size)


def _streamed_rows(dataset, limit: int) -> int:
    """Rows a streamed dataset gives, read up to `limit` (its preparation and row checks run on them)."""
    return sum(1 for _ in itertools.islice(iter(dataset), limit))


def _numbers(args: Any, batch_field: str, rows_text: str, *, train: bool) -> str:
    numbers = [
        rows_text,
        f"`{batch_field}={getattr(args, batch_field)}`",
        f"{args.world_size} process{'es' if args.world_size != 1 else ''} (world size)",
    ]
    if train:
        numbers.append(f"`gradient_accumulation_steps={args.gradient_accumulation_steps}`")
    numbers.append(f"`dataloader_drop_last={args.dataloader_drop_last}`")
    if train:
        numbers.append(f"`max_steps={args.max_steps}`" + (" (epochs decide)" if args.max_steps < 0 else ""))
    return ", ".join(numbers)


def _rows_text(rows: int, name: str, args: Any, report: Any, streamed: bool) -> str:
    what = f"{rows} row{'s' if rows != 1 else ''}"
    if streamed:
        return f"{what} in the streamed {name} dataset"
    notes = []
    if getattr(args, "packing", False) and name == "train":
        notes.append("after `packing` joined the rows into sequences")
    dropped = getattr(report, "rows_dropped", 0)
    if dropped:
        notes.append(f"{report.rows} before `masked_row_policy={report.policy!r}` dropped {dropped}")
    return what + (f" ({'; '.join(notes)})" if notes else "")


def _check_dataset(dataset, name: str, args: Any, report: Any, source: Any, *, train: bool) -> None:
    batch_field = "per_device_train_batch_size" if train else "per_device_eval_batch_size"
    batch_size, world_size = getattr(args, batch_field), args.world_size
    split = bool(getattr(getattr(args, "accelerator_config", None), "split_batches", False))
    streamed = not hasattr(dataset, "__len__")
    if streamed:  # the stream as given: reading the prepared one would mask (and count) its first row twice
        rows = _streamed_rows((source or {}).get("source", dataset), 1)
        batches = rows
    else:
        rows = len(dataset)
        batches = batches_per_process(rows, batch_size, world_size, args.dataloader_drop_last, split)
    if batches > 0:
        return
    numbers = _numbers(args, batch_field, _rows_text(rows, name, args, report, streamed), train=train)
    if streamed:
        fix = "check the stream's source and filters"
    else:
        per_step = batch_size if split else batch_size * world_size
        fixes = []
        if args.dataloader_drop_last:
            fixes.append("set `dataloader_drop_last=False` (the partial batch is then used)")
        if rows > 0:
            fixes.append(f"lower `{batch_field}` to {max(1, rows // (1 if split else world_size))} or less")
        fixes.append(f"give the dataset at least {per_step} rows")
        fix = ", or ".join(fixes)
    if train:
        outcome = (
            f"training would end at step 0 of `max_steps={args.max_steps}`"
            if args.max_steps > 0
            else "transformers would fail, unable to count the steps of an epoch"
        )
        raise ConfigError(
            f"The {name} dataset gives no optimizer step: {numbers}; the dataloader yields no batch, so {outcome}. "
            f"Fix: {fix}."
        )
    raise ConfigError(
        f"The {name} dataset gives no evaluation batch: {numbers}; evaluation would report no loss. Fix: {fix}."
    )


def check_run_length(
    train_dataset,
    eval_dataset,
    args: Any,
    reports: dict[str, Any] | None = None,
    streams: dict[str, Any] | None = None,
) -> None:
    """Refuse, before training, a train dataset that gives no optimizer step and an eval dataset (or any of a dict
    of them) that gives no batch, naming the rows, the batch size, the processes, the accumulation, drop_last and
    `max_steps` (`ConfigError`). `reports` are the pre-flight audits by dataset name (their dropped rows are said);
    `streams` holds each streamed dataset as given, before preparation (`{name: {"source": dataset}}`): its first
    row is read from there, so that the prepared stream masks and counts each row once."""
    reports, streams = reports or {}, streams or {}
    if train_dataset is not None:
        _check_dataset(train_dataset, "train", args, reports.get("train"), streams.get("train"), train=True)
    evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
    for name, dataset in evals.items():
        if dataset is not None:
            _check_dataset(dataset, name, args, reports.get(name), streams.get(name), train=False)


def check_stream_kept_rows(step: int, counts: dict[str, int] | None, args: Any) -> None:
    """After a run of a streamed train dataset: refuse a run that ended at step 0 because the pre-flight policies
    dropped every row read (`counts`: the stream's `rows` read and `kept`, from `streaming.check_stream`), which
    transformers only logs. A stream with fewer than 10 rows never reaches the policies' largest share."""
    if step > 0 or not counts or not counts["rows"] or counts["kept"]:
        return
    raise ConfigError(
        f"The train dataset gives no optimizer step: 0 rows in the streamed train dataset once the pre-flight "
        f"policies dropped all {counts['rows']} rows read (`masked_row_policy={args.masked_row_policy!r}`, "
        f"`max_steps={args.max_steps}`), so training ended at step 0. Fix: follow the fix in the policy's warning "
        "or log (e.g. raise `max_length`), or set `masked_row_policy='error'` to stop at the first such row."
    )
