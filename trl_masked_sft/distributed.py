"""Agreement across processes: every rank reaches the same verdict, so none raises alone and none waits forever.

Under `accelerate launch` / `torchrun`, a check that fails on one rank only would leave the others waiting in the
next collective (DDP's gradient all-reduce, FSDP's all-gather) until a timeout. Each check here costs one collective
on a tiny tensor, and every rank then raises the same error. Without a process group they are the plain checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from .errors import AllMaskedBatchError
from .masking import IGNORE_INDEX
from .validation import validate_batch

__all__ = ["process_info", "run_on_main", "validate_batch_across_ranks"]

T = TypeVar("T")


def process_info() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group; `(0, 1)` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def validate_batch_across_ranks(
    batch: Mapping[str, Any] | torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    where: str = "batch",
    tokenizer=None,
    first_label_is_target: bool = False,
) -> None:
    """`validate_batch` on every rank, with one all-reduce: if any rank's batch has no supervised token, all raise.

    The rank whose batch is all masked raises `validate_batch`'s message (its rows, the cause, the fix); the others
    raise an `AllMaskedBatchError` naming that rank, instead of running the forward pass and waiting for it forever.
    """
    rank, world = process_info()
    if world == 1:
        validate_batch(
            batch,
            ignore_index=ignore_index,
            where=where,
            tokenizer=tokenizer,
            first_label_is_target=first_label_is_target,
        )
        return
    labels = batch["labels"] if isinstance(batch, Mapping) else batch
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    rows = labels.unsqueeze(0) if labels.dim() == 1 else labels
    empty = torch.zeros(world, dtype=torch.float32, device=rows.device)
    targets = rows if first_label_is_target else rows[..., 1:]  # label 0 is a target under prompt tuning
    empty[rank] = (~(targets != ignore_index).any()).float()  # no host sync before the collective
    torch.distributed.all_reduce(empty)
    bad = empty.nonzero().flatten().tolist()
    if not bad:
        return
    if rank in bad:
        validate_batch(
            batch,
            ignore_index=ignore_index,
            where=f"{where} on rank {rank} (of {world})",
            tokenizer=tokenizer,
            first_label_is_target=first_label_is_target,
        )
    ranks = ", ".join(str(r) for r in bad)
    raise AllMaskedBatchError(
        f"The {where} on rank {ranks} (of {world}) has no supervised token: all its labels are {ignore_index} after "
        f"the causal shift. This rank ({rank}) stops too, so that no process waits forever in a collective; rank "
        f"{bad[0]}'s error shows the rows. Likely causes: prompts truncated at `max_length` before the answer "
        "starts, a response template that does not match the data, or a data collator that overwrites the labels. "
        "Fix: raise `max_length`, check the template against a decoded row, or pass no `data_collator`."
    )


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result, or the exception it raised, to every rank.

    Every rank must call this at the same point (it is a collective). The result must pickle.
    """
    rank, world = process_info()
    if world == 1:
        return fn()
    payload: list[Any] = [None]
    if rank == 0:
        try:
            payload = [(True, fn())]
        except Exception as exc:  # handed to every rank, then raised everywhere
            payload = [(False, exc)]
    torch.distributed.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value
