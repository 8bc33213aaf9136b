"""The seams to `datasets`, PEFT and the transformers line: column names of any dataset, a fast per-row `map` that
keeps untouched columns, the active adapter config of a (wrapped) model, and what the installed transformers (4.56+
or 5.x) can do."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import transformers
from datasets import Dataset, IterableDataset
from transformers import modeling_utils

from .precision import PRECISION_VARIABLE, precision_variable_kept

__all__ = [
    "COUNTS_UNSHIFTED_LABELS",
    "MASK_LOGITS_TO_KEEP",
    "TRANSFORMERS_MAJOR",
    "accelerator_precision",
    "active_peft_config",
    "check_resume_supported",
    "checkpointing_on",
    "column_names",
    "first_row",
    "in_memory_kwargs",
    "map_rows",
]

#: The installed transformers' major version: 4 (4.56.2 and later, as TRL 1.x supports) or 5.
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
#: Whether causal LMs take a boolean `(batch, seq_len)` `logits_to_keep` (transformers 5.x's `slice_logits_to_keep`);
#: 4.x models take an int or a 1-D tensor of positions kept in every row.
MASK_LOGITS_TO_KEEP = hasattr(modeling_utils, "slice_logits_to_keep")
#: Whether `Trainer` counts the loss's divisor (`num_items_in_batch`) over the labels before the causal shift, so a
#: row's supervised first token counts though it is never a target (4.x); 5.x counts `labels[..., 1:]`.
COUNTS_UNSHIFTED_LABELS = TRANSFORMERS_MAJOR < 5
#: `ACCELERATE_MIXED_PRECISION` when this package was imported: the launcher's (`accelerate launch --mixed_precision`).
_LAUNCH_PRECISION = os.environ.get(PRECISION_VARIABLE)


@contextmanager
def accelerator_precision(args) -> Iterator[None]:
    """While open (the trainer builds its `Accelerator` inside), `ACCELERATE_MIXED_PRECISION` says `args`' own
    precision: `fp16` or `bf16` where set, else the launcher's value (or `no`); the variable is put back after.

    Transformers 4.x's `TrainingArguments.__post_init__` writes its bf16/fp16 choice into that process-wide variable
    and takes the variable as the default of every later config, so after one bf16 config in a process a
    `bf16=False` run trained under bf16 autocast (checked with 4.57.6; huggingface/transformers#29510, fixed in 5.0.0
    by #41697: 5.x only reads the variable). A no-op on 5.x; goes when 4.x support does.
    """
    if TRANSFORMERS_MAJOR >= 5:
        yield
        return
    with precision_variable_kept():
        os.environ[PRECISION_VARIABLE] = "fp16" if args.fp16 else "bf16" if args.bf16 else (_LAUNCH_PRECISION or "no")
        yield


def checkpointing_on(args) -> bool:
    """Whether `args` turn activation checkpointing on: `activation_checkpointing` (transformers 5.x, which mirrors
    the deprecated `gradient_checkpointing` into it), else `gradient_checkpointing` (4.x's only name)."""
    value = getattr(args, "activation_checkpointing", None)
    return bool(getattr(args, "gradient_checkpointing", False) if value is None else value)


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The dataset's columns; for a streaming dataset with unknown features, the keys of its first row."""
    if dataset.column_names:
        return list(dataset.column_names)
    if isinstance(dataset, IterableDataset):
        first = first_row(dataset)
        return list(first) if first else []
    return []


def first_row(dataset: Dataset | IterableDataset) -> dict[str, Any] | None:
    """The first row, or `None` for an empty dataset."""
    if isinstance(dataset, Dataset):
        return dataset[0] if len(dataset) else None
    return next(iter(dataset), None)


def in_memory_kwargs(dataset: Dataset) -> dict[str, Any]:
    """`map` arguments for a dataset held in memory: a fresh fingerprint instead of one hashed from the function.

    `datasets` hashes the mapped function and everything it closes over (a tokenizer, templates) to name a cache
    file; that hashing costs more than a fast pass itself. A dataset without cache files is never read back from a
    cache, so the hash buys nothing there. Datasets loaded from disk keep `datasets`' own fingerprints and caching.
    """
    if dataset.cache_files:
        return {}
    from datasets.fingerprint import generate_random_fingerprint

    return {"new_fingerprint": generate_random_fingerprint()}


def map_rows(
    dataset: Dataset | IterableDataset,
    fn: Callable[[dict, int], dict],
    *,
    desc: str,
    columns: Sequence[str] | None = None,
    remove_columns: Sequence[str] = (),
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """`dataset.map(fn, with_indices=True, remove_columns=...)` for a per-row `fn(example, index) -> dict`, in
    batches of 1000 rows, reading and rewriting only `columns` (the ones `fn` reads; all when `None`).

    The per-row Python work is the same; what goes is the Arrow decode and encode of every single row and of the
    columns `fn` never touches (conversations, images), which cost more than most row checks themselves. The other
    columns are joined back unchanged, in their order. A streaming dataset is mapped row by row. `num_proc` > 1 maps
    in that many worker processes (`dataset_num_proc`).
    """
    if not isinstance(dataset, Dataset):
        return dataset.map(fn, with_indices=True, remove_columns=list(remove_columns) or None)
    from datasets import concatenate_datasets

    def apply(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        keys = list(batch)
        rows = [fn({key: batch[key][j] for key in keys}, index) for j, index in enumerate(indices)]
        return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}

    order = [c for c in dataset.column_names if c not in remove_columns]
    read = [c for c in dataset.column_names if columns is None or c in columns]
    parallel = num_proc is not None and num_proc > 1
    try:
        mapped = dataset.select_columns(read).map(
            apply,
            with_indices=True,
            batched=True,
            desc=desc,
            remove_columns=[c for c in remove_columns if c in read] or None,
            num_proc=num_proc if parallel else None,
            **({} if parallel else in_memory_kwargs(dataset)),  # worker processes name their shards from a hash
        )
    except Exception as error:
        if parallel and type(error).__module__.startswith(__name__.rpartition(".")[0] + "."):
            raise error.with_traceback(None) from None  # our error in a worker: raised here, as in one process
        raise
    untouched = [c for c in order if c not in read and c not in mapped.column_names]
    if not untouched:
        return mapped
    joined = concatenate_datasets([dataset.select_columns(untouched), mapped], axis=1)
    return joined.select_columns(order + [c for c in mapped.column_names if c not in order])


def active_peft_config(model) -> Any:
    """The active PEFT adapter config of `model` (looking through `.module` wrappers such as DDP), or `None`."""
    while hasattr(model, "module") and not hasattr(model, "active_peft_config"):
        model = model.module
    return getattr(model, "active_peft_config", None)


def check_resume_supported(checkpoint, args) -> None:
    """Raise `CheckpointError` before resuming where the installed transformers can't: a run of several processes on
    CPU (gloo) under transformers 4.x, whose checkpoint loading fails there with "don't know how to restore data
    location of torch.storage.UntypedStorage (tagged with cpu:0)" (checked with 4.57.6; 5.x resumes)."""
    if not checkpoint or TRANSFORMERS_MAJOR >= 5 or args.world_size <= 1 or args.device.type != "cpu":
        return
    from .errors import CheckpointError

    raise CheckpointError(
        f"Resuming from {os.path.basename(str(checkpoint))} with {args.world_size} CPU processes needs transformers "
        f"5.x: transformers {transformers.__version__} fails to load the checkpoint's tensors on CPU ranks. Fix: "
        "`pip install -U 'transformers>=5'`, or resume with one process (then continue on several)."
    )
