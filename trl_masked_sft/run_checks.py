"""Checks of the run: how long it is, before training (`check_run_length`), and whether each step is sound, as it
trains (`TrainingHealthGuard`).

Run length: the optimizer steps a training dataset gives and the batches an evaluation dataset gives, checked before
training, so that a configuration giving no optimizer step is refused with its numbers, where transformers would end
the run at step 0 (`max_steps` set) or fail on "args.max_steps must be set to a positive value" (epochs), and an
evaluation dataset giving no batch is refused where `evaluate` would report no loss.

The counts follow transformers 5.x and accelerate: a map-style dataset is cut into batches of
`per_device_*_batch_size` (the last, partial one dropped with `dataloader_drop_last=True`), and the batches are
dealt to the processes (each gets `batches // world_size` when dropping, else the even share rounded up); a partial
gradient accumulation still makes a step. A streamed dataset is not cut that way (its last partial batch is kept),
so it gives no step only when it gives no row.

Step health: `TrainingHealthGuard` stops a run at the first bad step, before the optimizer applies it, and keeps the
last good one. A step is bad when a micro-batch's loss or the step's gradient norm is not finite (NaN, inf), or when
the step has no supervised token. `Trainer` logs such steps quietly: `logging_nan_inf_filter=True` (the default)
logs the running mean instead of a NaN loss, and an all-masked step logs loss 0.0 and grad_norm 0. The guard checks
the raw values in `on_pre_optimizer_step`, after the backward pass and before `optimizer.step()`, so the bad update
is never applied and never saved over the last good checkpoint.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Protocol

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import last_complete_checkpoint
from .distributed import process_info
from .errors import ConfigError, TrainingHealthError
from .logs import get_logger
from .masking import IGNORE_INDEX
from .model_checks import check_gradients_reached, first_label_is_target

__all__ = ["TrainingHealthGuard", "batches_per_process", "check_run_length", "check_stream_kept_rows"]

logger = get_logger(__name__)


def _scalar(value) -> torch.Tensor | None:
    if value is None:
        return None
    if hasattr(value, "full_tensor"):  # a DTensor (FSDP2)
        value = value.full_tensor()
    return value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value))


class GuardedTrainer(Protocol):
    """What the guard uses of the trainer it watches; `MaskedSFTTrainer` provides all of it."""

    accelerator: Any
    is_deepspeed_enabled: bool
    is_fsdp_enabled: bool

    def save_last_good_checkpoint(self) -> None:
        """Save a checkpoint of the current (last good) weights."""


class TrainingHealthGuard(TrainerCallback):
    """Stop training at the first step with a non-finite loss or gradient norm, or with no supervised token.

    The error names the step, the value seen, the likely cause and the fix, and where the last good weights are. The
    bad step's update is not applied (the check runs before `optimizer.step()`), so the last good checkpoint stays
    intact. Given a trainer with `save_last_good_checkpoint` (`GuardedTrainer`) and with checkpoints on (`save_strategy` not `"no"`), the last good weights (those
    of the previous step) are saved as `checkpoint-<step - 1>` first, unless that checkpoint exists.

    At the first step of each `train()` call it also checks that the trainable parameters received a gradient
    (`model_checks.check_gradients_reached`; skipped under DeepSpeed and FSDP, which keep gradients elsewhere).

    `MaskedSFTTrainer` installs it (`health_checks=True`) and feeds it each micro-batch's raw loss
    (`observe_loss`) and the step's pre-clipping gradient norm (`observe_grad_norm`). Added to a plain `Trainer`,
    it computes the gradient norm itself from the model's gradients. In a multi-process run the verdict is reduced
    across ranks (one all-reduce per step), so every rank stops at the same step. With fp16 loss scaling a
    non-finite gradient norm is the scaler's business (it skips the step); only a non-finite loss stops the run.
    """

    def __init__(self, trainer: GuardedTrainer | None = None, *, save_last_good: bool = True):
        self._trainer = trainer
        self._save_last_good = save_last_good
        self._grads_checked = False
        self._first_label_counts = False
        self._reset_step()

    def _reset_step(self) -> None:
        self._loss: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None

    # --------------------------------------------------------------------------------- fed by the trainer

    def observe_loss(self, loss: torch.Tensor, num_items_in_batch=None, labels: torch.Tensor | None = None) -> None:
        """Record one micro-batch's raw loss and the step's supervised-token count (no host sync)."""
        loss = loss.detach().float().sum()
        self._loss = loss if self._loss is None else self._loss + loss
        if self._first_label_counts and isinstance(labels, torch.Tensor):
            # Prompt tuning / p-tuning train each row's label 0 too, which Trainer's count leaves out; only whether
            # the step's count is zero matters, so the larger of the two is kept.
            count = (labels != IGNORE_INDEX).sum().float()
            if num_items_in_batch is not None:
                count = torch.maximum(count, _scalar(num_items_in_batch).to(count.device))
            self._tokens = count if self._tokens is None else self._tokens + count
        elif num_items_in_batch is not None:  # counted by Trainer over the whole accumulation window (and ranks)
            self._tokens = _scalar(num_items_in_batch)
        elif isinstance(labels, torch.Tensor):
            count = (labels[..., 1:] != IGNORE_INDEX).sum().float()
            self._tokens = count if self._tokens is None else self._tokens + count

    def observe_grad_norm(self, grad_norm) -> None:
        """Record the step's gradient norm before clipping."""
        self._grad_norm = _scalar(grad_norm)

    # --------------------------------------------------------------------------------- callback events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._grads_checked = False
        self._first_label_counts = first_label_is_target(model if model is not None else self._model())
        self._reset_step()

    def _model(self):
        return getattr(self._trainer, "model", None)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        try:
            self._check_step(args, state, model)
            if not self._grads_checked and model is not None and not self._gradients_elsewhere(args):
                check_gradients_reached(model)
            self._grads_checked = True
        finally:
            self._reset_step()

    # --------------------------------------------------------------------------------- the check

    def _gradients_elsewhere(self, args) -> bool:
        trainer = self._trainer
        if trainer is not None:
            return bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))
        return bool(getattr(args, "deepspeed", None) or getattr(args, "fsdp", None))

    def _own_grad_norm(self, model) -> torch.Tensor | None:
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads or any(hasattr(g, "full_tensor") for g in grads):
            return None
        return torch.nn.utils.get_total_norm(grads).float()

    def _scaler_active(self) -> bool:
        accelerator = getattr(self._trainer, "accelerator", None)
        return getattr(accelerator, "scaler", None) is not None

    def _check_step(self, args, state, model) -> None:
        grad_norm = self._grad_norm if self._grad_norm is not None else self._own_grad_norm(model)
        values = [self._loss, grad_norm, self._tokens]
        device = next((v.device for v in values if v is not None), torch.device("cpu"))
        stats = torch.stack([v.to(device) if v is not None else torch.zeros((), device=device) for v in values])
        checks = [values[0] is not None, values[1] is not None and not self._scaler_active(), values[2] is not None]
        bad = torch.stack([~torch.isfinite(stats[0]), ~torch.isfinite(stats[1]), stats[2] == 0]).float()
        bad = bad * torch.tensor(checks, dtype=torch.float32, device=device)
        # One row per rank (flags, then values); summed across ranks, every rank sees every rank's row.
        rank, world = process_info()
        table = torch.zeros(world, 6, device=device)
        table[rank] = torch.cat([bad, stats])
        if world > 1:
            torch.distributed.all_reduce(table)
        rows = table.tolist()  # the one host sync of the check
        if any(any(row[:3]) for row in rows):
            self._stop(args, state, rows)

    def _stop(self, args, state, rows: list[list[float]]) -> None:
        step, world = state.global_step + 1, len(rows)
        accumulation = getattr(args, "gradient_accumulation_steps", 1)

        def ranks(flag: int) -> list[int]:
            return [r for r, row in enumerate(rows) if row[flag]]

        def where(found: list[int]) -> str:
            return f" on rank {', '.join(map(str, found))} (of {world})" if world > 1 else ""

        if ranks(0):
            found = ranks(0)
            what = f"the loss is {', '.join(str(rows[r][3]) for r in found)} (not finite){where(found)}"
            cause = (
                "a learning rate too high for this model, fp16 overflow, NaN/inf in the model's weights or inputs, "
                "or a custom loss that divides by zero or takes the log of 0"
            )
            fix = (
                f"lower `learning_rate` (now {args.learning_rate:g}), keep `max_grad_norm` > 0 (now "
                f"{args.max_grad_norm:g}), prefer bf16 or fp32 to fp16, and check the model's weights are finite"
            )
        elif ranks(1):
            found = ranks(1)
            what = f"the gradient norm is {rows[found[0]][4]} (not finite) while the loss is {rows[found[0]][3]:.6g}"
            what += where(found)
            cause = (
                "exploding gradients (learning rate too high), fp16 overflow without loss scaling, or an operation "
                "with an infinite derivative (e.g. `sqrt` of 0) in a custom loss"
            )
            fix = (
                f"lower `learning_rate` (now {args.learning_rate:g}), keep `max_grad_norm` > 0 (now "
                f"{args.max_grad_norm:g}), or use bf16 / fp32"
            )
        else:
            what = (
                f"it has no supervised token in its {accumulation} micro-batch(es){where(ranks(2))}: every label is "
                f"{IGNORE_INDEX}"
            )
            cause = (
                "prompts truncated at `max_length` before the answer starts, a response template that does not match "
                "the data, or a data collator that overwrites the labels"
            )
            fix = "raise `max_length`, check the template against a decoded row, or pass no `data_collator`"
        saved = self._save(args, state)
        last, _ = last_complete_checkpoint(args.output_dir)
        if saved:
            kept = f"The last good weights (step {state.global_step}) were saved to {saved}."
        elif last:
            kept = f"The last good checkpoint is {last}; it was not overwritten."
        else:
            kept = "No checkpoint was saved (set `save_strategy` and `save_steps` to keep one)."
        resume = " Then resume with `trainer.train(resume_from_checkpoint=True)`." if (saved or last) else ""
        raise TrainingHealthError(
            f"Training stopped at step {step}: {what}. The update of step {step} was not applied. {kept} Likely "
            f"cause: {cause}. Fix: {fix}.{resume}"
        )

    def _save(self, args, state) -> str | None:
        """Save the last good weights through the trainer when checkpoints are on and that step has none yet."""
        trainer = self._trainer
        if not self._save_last_good or not hasattr(trainer, "save_last_good_checkpoint") or state.global_step == 0:
            return None
        if getattr(args, "save_strategy", "no") == "no":
            return None
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(path):
            return None
        try:
            trainer.save_last_good_checkpoint()
        except Exception as exc:  # saving must not hide the health error
            logger.warning(f"Could not save the last good weights to {path}: {exc}")
            return None
        return path


# ---------------------------------------------------------------------------------------------------- run length


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
