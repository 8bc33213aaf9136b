"""Per-token loss weights: the `WEIGHTS` column that preparation writes when a message carries a weight, carried
through any collator and counted over the accumulation window for the weighted loss `Σ w·CE / Σ w`.

Without a weighted message there is no column, no wrapper and no code path here: every number is the unweighted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .masking import IGNORE_INDEX, WEIGHTS, truncate_row

__all__ = [
    "WeightedBatches",
    "WeightedCollator",
    "collating",
    "is_weighted",
    "truncate_weighted",
    "weight_spread",
    "weighted_items",
    "weighted_num_items",
]


def truncate_weighted(
    ids: list[int], labels: list[int], weights: list[float] | None, max_length: int | None, **how: Any
) -> tuple[list[int], list[int], list[float] | None]:
    """`truncate_row`, and the weights keep the positions the ids and labels keep (`None`: an unweighted row)."""
    if weights is None:
        return (*truncate_row(ids, labels, max_length, **how), None)
    kept, labels = truncate_row(list(range(len(ids))), labels, max_length, **how)
    return [ids[i] for i in kept], labels, [weights[i] for i in kept]


class WeightedCollator:
    """Wraps a collator so a batch of weighted rows gets a `WEIGHTS` tensor laid out exactly as its `labels`.

    The weights travel as labels: each row's weights become codes (an index into the batch's distinct weights, `-100`
    where the label is masked) and the collator is called a second time on rows whose labels are those codes, so
    padding sides, padding-free flattening, packing and any masking the collator adds place them where the labels go.
    A row without weights counts 1.0 on each supervised token.
    """

    def __init__(self, collator: Callable[[list[dict]], Any]):
        self.collator = collator

    def __getattr__(self, name: str) -> Any:  # `pad_token_id`, `matcher`, ... of the wrapped collator
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, examples: Sequence[dict]) -> Any:
        if not examples or not any(isinstance(e, dict) and WEIGHTS in e for e in examples):
            return self.collator(examples)
        plain = [{k: v for k, v in e.items() if k != WEIGHTS} for e in examples]
        batch = self.collator(plain)
        if "labels" not in batch:
            return batch
        rows = [_row_weights(e) for e in examples]
        table = sorted({w for row in rows for w in row})
        code = {w: i for i, w in enumerate(table)}
        coded = [
            {
                **e,
                "labels": [
                    code[w] if lab != IGNORE_INDEX else IGNORE_INDEX for w, lab in zip(ws, e["labels"], strict=True)
                ],
            }
            for e, ws in zip(plain, rows, strict=True)
        ]
        with warnings.catch_warnings():  # said on the first call already (a template that leaves nothing, ...)
            warnings.simplefilter("ignore")
            codes = self.collator(coded)["labels"]
        values = torch.tensor(table or [0.0], dtype=torch.float32)
        batch[WEIGHTS] = torch.where(codes != IGNORE_INDEX, values[codes.clamp(min=0)], 0.0)
        return batch


def _row_weights(example: dict) -> list[float]:
    labels = example["labels"]
    weights = example.get(WEIGHTS)
    if weights is None:
        return [1.0] * len(labels)
    return [float(w) for w in weights]


def weighted_items(batches: Sequence[dict], device: torch.device | None = None) -> torch.Tensor | None:
    """`Σ w` over the supervised targets (`labels[..., 1:]`) of the micro-batches of one optimizer step, the weighted
    counterpart of transformers' `num_items_in_batch`; `None` when the batches carry no weights."""
    if not batches or WEIGHTS not in batches[0]:
        return None
    total = sum((b[WEIGHTS][..., 1:].float() * (b["labels"][..., 1:] != IGNORE_INDEX)).sum() for b in batches)
    return total.to(device) if device is not None else total


def weighted_num_items(trainer: Any, batches: Sequence[dict], device, count):
    """What transformers' `Trainer._get_num_items_in_batch` returns (`count`), with `Σ w` in place of the token count
    for weighted batches: summed over the accumulation window, gathered across ranks and divided by the ranks that
    share a batch, as transformers 5.25 treats the count. Unweighted batches (or `count is None`): `count` as is."""
    total = weighted_items(batches, device) if count is not None else None
    if total is None:
        return count
    args = trainer.args
    if args.average_tokens_across_devices and args.world_size > 1:
        total = trainer.accelerator.gather(total).sum()
    # transformers 4.x has no context or sequence parallelism (no `get_cp_size`/`get_sp_size`): those count as 1
    sizes = [getattr(trainer, f"get_{kind}_size", lambda: 1)() for kind in ("tp", "cp", "sp")]
    return total / (sizes[0] * sizes[1] * sizes[2])


def is_weighted(dataset: Any) -> bool:
    """Whether a prepared dataset (or any dataset of a dict of them) has the `WEIGHTS` column; a streamed dataset
    whose columns are not known counts as weighted."""
    if isinstance(dataset, dict):
        return any(is_weighted(d) for d in dataset.values())
    names = getattr(dataset, "column_names", None)
    if names is None:  # a streamed dataset: its rows say it (the wrapper passes unweighted batches through)
        return isinstance(dataset, torch.utils.data.IterableDataset) or type(dataset).__name__ == "IterableDataset"
    return WEIGHTS in names


@contextmanager
def collating(trainer: Any, collator: Any, dataset: Any) -> Iterator[None]:
    """`trainer.data_collator` is `collator` for the block, wrapped in `WeightedCollator` when `dataset` is weighted."""
    kept = trainer.data_collator
    trainer.data_collator = WeightedCollator(collator) if is_weighted(dataset) else collator
    try:
        yield
    finally:
        trainer.data_collator = kept


def weight_spread(columns: dict[str, list]) -> dict[str, float]:
    """The spread of the weights over the supervised tokens of a prepared dataset (`labels` and `WEIGHTS` columns):
    `min`, `mean`, `max`, and `share_not_1`, the share of those tokens whose weight is not 1."""
    trained = [
        float(w)
        for labels, weights in zip(columns["labels"], columns[WEIGHTS], strict=True)
        for label, w in zip(labels[1:], weights[1:], strict=True)
        if label != IGNORE_INDEX
    ]
    if not trained:
        return {"min": 0.0, "mean": 0.0, "max": 0.0, "share_not_1": 0.0}
    return {
        "min": min(trained),
        "mean": sum(trained) / len(trained),
        "max": max(trained),
        "share_not_1": sum(w != 1.0 for w in trained) / len(trained),
    }


def pack_weighted(dataset: Any, args: Any, dataset_name: str) -> Any:
    """TRL's packing step (`SFTTrainer._prepare_dataset` with `packing=True`, trl 1.16) for a weighted dataset: TRL
    keeps only `input_ids` and `labels`; here `WEIGHTS` is packed with them (`pack_dataset` packs every list column
    the same way)."""
    from trl.data_utils import pack_dataset

    if args.max_length is None:
        raise ValueError("When packing is enabled, `max_length` can't be `None`. Fix: set `max_length`.")
    from datasets import Dataset

    kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Packing {dataset_name} dataset"}
    kwargs = kwargs if isinstance(dataset, Dataset) else {}  # `IterableDataset.map` takes neither
    dataset = dataset.select_columns(["input_ids", "labels", WEIGHTS])
    if args.shuffle_dataset:
        dataset = dataset.shuffle(seed=args.seed)
    return pack_dataset(dataset, args.max_length, args.packing_strategy, kwargs)


class WeightedBatches:
    """The `Trainer` hooks weighted rows need (a mixin of `MaskedSFTTrainer`, before `SFTTrainer`): the `WEIGHTS`
    column kept by `remove_unused_columns`, laid out by the eval collator, and `Σ w` as `num_items_in_batch`."""

    def get_eval_dataloader(self, eval_dataset=None):
        with collating(self, self.data_collator, self.eval_dataset):
            return super().get_eval_dataloader(eval_dataset)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if WEIGHTS not in self._signature_columns:  # the column is there only when a message has a weight
            self._signature_columns.append(WEIGHTS)

    def _get_num_items_in_batch(self, batch_samples, device):
        return weighted_num_items(self, batch_samples, device, super()._get_num_items_in_batch(batch_samples, device))
