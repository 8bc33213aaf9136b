"""Checks of batches: `validate_batch` (every batch has a supervised token) and the user collator's batches (they keep
the prepared labels and the loss's ignore index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset

from .errors import (
    AllMaskedBatchError,
    LabelsOverwrittenError,
)
from .logs import warn
from .masking import IGNORE_INDEX
from .text import clip_end, whole_text

__all__ = [
    "check_collator_keeps_labels",
    "collated_label_changes",
    "validate_batch",
]


def validate_batch(
    batch: Mapping[str, Any] | torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    where: str = "batch",
    tokenizer=None,
    first_label_is_target: bool = False,
) -> None:
    """Raise `AllMaskedBatchError` when no label in the batch is trained after the causal shift.

    `batch` is a collated batch (a mapping with `labels`) or the labels tensor itself. Position 0 of a row is never
    a target, so it does not count, unless `first_label_is_target` (prompt tuning / p-tuning models, see the
    function of that name). The check is one reduction on the labels tensor and one scalar read; the message (built
    only on failure) names the batch's rows and, given `tokenizer`, shows the end of each.
    """
    labels = batch["labels"] if isinstance(batch, Mapping) else batch
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.dim() == 1:
        labels = labels.unsqueeze(0)
    targets = labels if first_label_is_target else labels[..., 1:]
    if bool((targets != ignore_index).any()):
        return
    rows = labels.shape[0]
    detail = ""
    if tokenizer is not None and isinstance(batch, Mapping) and "input_ids" in batch:
        ids = batch["input_ids"].detach().cpu()
        mask = batch.get("attention_mask")
        shown = []
        for i in range(min(rows, 3)):
            row = ids[i][mask[i].bool().cpu()] if mask is not None else ids[i]
            shown.append(f"  row {i}: ...{clip_end(whole_text(tokenizer, row.tolist()), 80, mark='')!r}")
        detail = "\nFirst rows (end of text):\n" + "\n".join(shown)
    raise AllMaskedBatchError(
        f"The {where} has no supervised token: all labels of its {rows} rows (rows 0-{rows - 1}) are "
        f"{ignore_index} after the causal shift, so this step would log loss 0.0 and grad_norm 0 and train on "
        "nothing. Likely causes: prompts truncated at `max_length` before the answer starts, a response template "
        "that does not match the data, or a data collator that overwrites the labels. Fix: raise `max_length`, "
        "check the template against a decoded row, or let `MaskedSFTTrainer` build the labels (pass no "
        f"`data_collator`).{detail}"
    )


def collated_label_changes(
    features: Sequence[Mapping[str, Sequence[int]]], batch: Any, ignore_index: int = IGNORE_INDEX
) -> tuple[int, int] | None:
    """`(extra, missing)`: tokens a collator's `batch` trains that the prepared `features` mask, and the reverse.

    Each feature's row is found in the batch whether it was padded on the right or on the left; rows whose tokens
    the collator changed are skipped (the batch validator still checks them). Position 0 never counts. `None` when
    the batch has no 2-D `labels` with one row per feature.
    """
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[0] != len(features):
        return None
    batch_ids = batch.get("input_ids")
    extra = missing = 0
    for i, feature in enumerate(features):
        expected = torch.tensor(feature["labels"])
        n, ids = len(expected), torch.tensor(feature["input_ids"])
        if isinstance(batch_ids, torch.Tensor) and batch_ids.shape[1] >= n:
            if torch.equal(batch_ids[i, :n].cpu(), ids):
                got = labels[i, :n]
            elif torch.equal(batch_ids[i, -n:].cpu(), ids):
                got = labels[i, -n:]
            else:
                continue
        else:
            got = labels[i, :n]
        got = got.cpu()
        extra += int(((got != ignore_index) & (expected == ignore_index))[1:].sum())
        missing += int(((got == ignore_index) & (expected != ignore_index))[1:].sum())
    return extra, missing


def check_collator_ignore_index(collator) -> None:
    """A `DataCollatorForCompletionOnlyLM` whose `ignore_index` is not the loss's would train that value as a token id."""
    ignore = getattr(collator, "ignore_index", IGNORE_INDEX)
    if type(collator).__name__ == "DataCollatorForCompletionOnlyLM" and ignore != IGNORE_INDEX:
        raise ValueError(
            f"`data_collator` is DataCollatorForCompletionOnlyLM(ignore_index={ignore}), but the trainer's loss "
            f"ignores only {IGNORE_INDEX}: the other value would be trained on as a token id. Fix: leave "
            "`ignore_index` at its default (-100) when training with MaskedSFTTrainer."
        )


def check_collator_keeps_labels(collator, dataset) -> None:
    """Collate a few prepared rows with the user's `collator` and compare its labels with `dataset`'s.

    Raises `LabelsOverwrittenError` when the collator trains masked (prompt) tokens; warns when it masks
    supervised ones."""
    if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names or len(dataset) == 0:
        return
    rows = dataset.select(range(min(8, len(dataset))))
    features = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    try:
        batch = collator(features)
    except Exception:
        # Collators built for raw `input_ids` (e.g. transformers' DataCollatorForLanguageModeling) fail on
        # ragged `labels`; what they do with `input_ids` alone is what they would train on.
        try:
            batch = collator([{"input_ids": f["input_ids"]} for f in features])
        except Exception:  # needs other columns: the batch validator still checks every batch
            return
    changes = collated_label_changes(features, batch)
    name = type(collator).__name__
    if changes and changes[0]:
        raise LabelsOverwrittenError(
            f"The data collator ({name}) overwrites the labels: on the first {len(features)} rows it trains "
            f"{changes[0]} tokens that the prepared dataset masks (prompt tokens). Fix: pass no `data_collator` "
            "(MaskedSFTTrainer builds the labels), use DataCollatorForCompletionOnlyLM, or make your collator "
            "keep the `labels` it receives. Set `completion_only_loss=False` if training on prompts is intended."
        )
    if changes and changes[1]:
        warn(
            f"The data collator ({name}) masks {changes[1]} of the supervised tokens of the first {len(features)} "
            "rows (often the eos token when pad == eos and padding is found by id), so the model may never "
            "learn to stop. Fix: pass no `data_collator`, or use DataCollatorForCompletionOnlyLM.",
            stacklevel=3,
        )
