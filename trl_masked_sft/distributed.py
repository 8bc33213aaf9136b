"""Agreement across processes: every rank reaches the same verdict, so none raises alone and none waits forever.

Under `accelerate launch` / `torchrun`, a check that fails on one rank only would leave the others waiting in the
next collective (DDP's gradient all-reduce, FSDP's all-gather) until a timeout. Each check here costs one collective
on a tiny tensor (or a small pickled object), and every rank then raises the same error. Without a process group
they are the plain checks.

- `validate_batch_across_ranks`: one all-reduce per batch; `run_on_main`: rank 0 computes, every rank gets it;
- `agree_on_checkpoint`: every rank looks at its own disk, and all resume from one checkpoint or stop together with
  one error naming the node that lacks it;
- `sum_across_ranks`: the mask metrics of the whole step, not rank 0's;
- `prepare_once`: each node's main process prepares the data, the other processes on that node load its result;
- `fsdp_not_sharded`: an FSDP configuration that accelerate ran unsharded (its CPU fallback), said.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from .batch_checks import validate_batch
from .checkpoints import (
    check_checkpoint_fits,
    checkpoint_problem,
    checkpoint_steps,
    last_sound_checkpoint,
    resolve_resume_checkpoint,
)
from .errors import AllMaskedBatchError, CheckpointError
from .logs import get_logger
from .masking import IGNORE_INDEX

__all__ = [
    "agree_on_checkpoint",
    "fsdp_not_sharded",
    "prepare_once",
    "process_info",
    "run_on_main",
    "sum_across_ranks",
    "validate_batch_across_ranks",
]

logger = get_logger(__name__)

T = TypeVar("T")
_alone = [False]  # True while a node's main process prepares the data for its node: no collective inside


def process_info() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group; `(0, 1)` without one, or inside `prepare_once`."""
    if not _alone[0] and torch.distributed.is_available() and torch.distributed.is_initialized():
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


def sum_across_ranks(values: list[float]) -> list[float]:
    """`values` summed element-wise over every rank (one all-reduce of a small tensor); as is with one process."""
    if process_info()[1] == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        total = total.cuda()
    torch.distributed.all_reduce(total)
    return total.cpu().tolist()


def _gather(value: Any) -> list[Any]:
    gathered: list[Any] = [None] * process_info()[1]
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _node() -> str:
    """This process's node, for messages: torchrun's node rank (`GROUP_RANK`) and the host name."""
    group = os.environ.get("GROUP_RANK")
    return f"node {group} ({socket.gethostname()})" if group is not None else f"host {socket.gethostname()}"


def _by_node(views: list[dict], text: Callable[[dict], str]) -> str:
    """One line per node (ranks of a node that see the same thing are named together)."""
    lines: dict[tuple[str, str], list[int]] = {}
    for view in views:
        lines.setdefault((view["node"], text(view)), []).append(view["rank"])
    return "; ".join(f"{node}, rank {', '.join(map(str, ranks))}: {what}" for (node, what), ranks in lines.items())


_FIX = (
    "Every rank loads the weights, trainer state and optimizer from its own disk. Fix: put `output_dir` on storage "
    "every node shares, or set `save_on_each_node=True` so that every node keeps its own complete copy, or copy the "
    "checkpoint folder to every node and pass its path as `resume_from_checkpoint`."
)


def agree_on_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str, model=None) -> str | bool | None:
    """`resolve_resume_checkpoint` agreed by every rank: all resume from the same checkpoint, or all raise one error.

    Each rank checks its own disk (nodes may not share `output_dir`). `True` picks the highest step whose
    `checkpoint-N` is complete and sound on every rank, saying which newer ones some node lacks; a path must be
    sound on every rank. Otherwise every rank raises `CheckpointError` naming each node, what it lacks, and the fix.
    One `all_gather_object` when every rank's newest complete checkpoint is the same, one more per older candidate.
    """
    rank, world = process_info()
    if world == 1 or resume_from_checkpoint is None or resume_from_checkpoint is False:
        return resolve_resume_checkpoint(resume_from_checkpoint, output_dir, model)
    if resume_from_checkpoint is not True:
        try:
            path, problem = resolve_resume_checkpoint(resume_from_checkpoint, output_dir, model), None
        except CheckpointError as error:
            path, problem = None, str(error)
        views = _gather({"rank": rank, "node": _node(), "problem": problem})
        if any(view["problem"] for view in views):
            bad = [view for view in views if view["problem"]]
            raise CheckpointError(
                f"`resume_from_checkpoint={str(resume_from_checkpoint)!r}` can't be resumed from on every rank: "
                f"{_by_node(bad, lambda view: view['problem'])}. {_FIX}"
            )
        return path
    last, skipped = last_sound_checkpoint(output_dir)
    steps = checkpoint_steps(output_dir)
    mine = {"rank": rank, "node": _node(), "dir": str(output_dir), "last": _step(last), "steps": steps}
    mine["skipped"] = skipped
    views = _gather(mine)
    if all(view["last"] is None for view in views):
        return resolve_resume_checkpoint(True, output_dir, model)  # nothing anywhere: the same error on every rank
    lowest = min(-1 if view["last"] is None else view["last"] for view in views)
    common = set.intersection(*(set(view["steps"]) for view in views))
    for step in sorted((s for s in common if s <= lowest), reverse=True):
        path = Path(output_dir) / f"checkpoint-{step}"
        everywhere = all(view["last"] == step for view in views)  # the same on every rank: no gather, or one each
        if everywhere or not any(_gather(checkpoint_problem(path) if step != mine["last"] else None)):
            newest = max(view["last"] for view in views if view["last"] is not None)
            if step < newest or any(view["skipped"] for view in views):
                fix = f" {_FIX}" if step < newest else " Delete the skipped ones to silence this message."
                logger.warning(
                    f"Resuming every rank from checkpoint-{step}, the newest checkpoint complete on every rank; "
                    f"skipped the newer ones: {_by_node(views, _described)}.{fix}"
                )
            check_checkpoint_fits(path, model)
            return str(path)
    raise CheckpointError(
        "`resume_from_checkpoint=True` finds no checkpoint that every rank can resume from: "
        f"{_by_node(views, _described)}. {_FIX}"
    )


def _step(path: str | None) -> int | None:
    return None if path is None else int(path.rsplit("-", 1)[1])


def _described(view: dict) -> str:
    """What one rank's `output_dir` holds, for the messages of `agree_on_checkpoint`."""
    last = f"checkpoint-{view['last']} is its last complete one" if view["last"] is not None else "nothing complete"
    skipped = "; ".join(f"{Path(path).name}: {problem}" for path, problem in list(view["skipped"].items())[:2])
    return f"in {view['dir']}, {last}" + (f" ({skipped})" if skipped else "")


@contextlib.contextmanager
def _as_one_process() -> Iterator[None]:
    _alone[0] = True
    try:
        yield
    finally:
        _alone[0] = False


def prepare_once(prepare: Callable[[], tuple[Any, T]], *, streamed: bool = False) -> tuple[Any, T]:
    """`prepare()` -> `(datasets.Dataset, extra)` run by each node's main process (`LOCAL_RANK` 0) only; the other
    processes of the node load the dataset it saved (Arrow files, memory-mapped) and get `extra` (picklable).

    As transformers' `main_process_first` intends, but without preparing again behind it: a node of 8 processes
    prepares once. An exception raised by a main process is raised on every rank. Inside `prepare`, the collectives
    of this module act as in one process (the other ranks are not there). A `streamed` dataset is prepared lazily by
    every rank (nothing is read up front, nothing to share). One `all_gather_object` per dataset.
    """
    rank, world = process_info()
    if world == 1 or streamed:
        return prepare()
    from datasets import Dataset, load_from_disk

    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    payload = None
    if local_rank == 0:
        try:
            with _as_one_process():
                dataset, extra = prepare()
            payload = (True, None)  # not an Arrow dataset (a torch dataset): the other ranks prepare it themselves
            if isinstance(dataset, Dataset):
                folder = tempfile.mkdtemp(prefix="trl_masked_sft-prepared-")
                atexit.register(shutil.rmtree, folder, True)  # the other ranks' memory maps outlive the files
                dataset.save_to_disk(folder)
                payload = (True, (folder, extra))
        except Exception as exc:  # handed to every rank, then raised everywhere
            payload = (False, exc)
    views = _gather((rank - local_rank, payload))  # (the node's first rank, what its main process sends)
    failed = next((sent[1] for _, sent in views if sent is not None and not sent[0]), None)
    if failed is not None:
        raise failed
    if local_rank == 0:
        return dataset, extra
    saved = next(sent[1] for node, sent in views if node == rank - local_rank and sent is not None)
    if saved is None:
        with _as_one_process():
            return prepare()
    folder, extra = saved
    return load_from_disk(folder), extra


def fsdp_not_sharded(trainer) -> str | None:
    """A warning when FSDP is configured (`fsdp` or accelerate's `ACCELERATE_USE_FSDP`) but the run is not sharded,
    as accelerate does on a machine without accelerators; None otherwise."""
    configured = bool(getattr(trainer.args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in (
        "1",
        "true",
        "yes",
    )
    if not configured or trainer.is_fsdp_enabled:
        return None
    world = trainer.accelerator.num_processes
    return (
        f"FSDP is configured, but this run is not sharded: accelerate runs it as "
        f"`{trainer.accelerator.distributed_type}` on {world} process(es), each holding the whole model, its gradients "
        "and optimizer state (under several processes, plain DistributedDataParallel). accelerate does this where FSDP "
        "can't run, e.g. on CPUs. Packing and the supervised-only loss behave as under DDP. Fix: launch on GPUs to "
        "shard, or remove the FSDP configuration (`fsdp`, `distributed_type: FSDP`) to train as DDP knowingly."
    )
