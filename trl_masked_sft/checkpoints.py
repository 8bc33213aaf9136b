"""Resuming from checkpoints that are complete: a run killed while saving leaves a partial `checkpoint-N` behind.

`Trainer` writes `trainer_state.json` last when it saves a checkpoint (after the weights, optimizer, scheduler and RNG
states), so a checkpoint is complete when that file exists and parses. `transformers.trainer_utils.get_last_checkpoint`
picks the highest-numbered folder whatever it holds, and resuming from a partial one fails inside `Trainer` (or, with
only the weights written, restarts the schedule from step 0).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .errors import CheckpointError

__all__ = ["is_complete_checkpoint", "last_complete_checkpoint", "resolve_resume_checkpoint"]

logger = logging.get_logger(__name__)

_STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` holds a readable `trainer_state.json` (written last by `Trainer`)."""
    state = Path(path) / _STATE_FILE
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def _checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, list[str]]:
    """`(the highest-step complete checkpoint or None, the incomplete checkpoints above it)`."""
    skipped: list[str] = []
    for _, path in reversed(_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return str(path), skipped
        skipped.append(str(path))
    return None, skipped


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | bool | None:
    """What `Trainer.train(resume_from_checkpoint=...)` should get: a complete checkpoint, or None to start afresh.

    `True` picks the last *complete* checkpoint in `output_dir`, saying which incomplete ones it skipped; a path must
    be a complete checkpoint. Raises `CheckpointError` with the fix otherwise.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return resume_from_checkpoint
    if resume_from_checkpoint is True:
        path, skipped = last_complete_checkpoint(output_dir)
        if path is None:
            found = f" (incomplete: {', '.join(skipped)})" if skipped else ""
            raise CheckpointError(
                f"`resume_from_checkpoint=True` but `output_dir` ({output_dir}) holds no complete checkpoint{found}. "
                "Fix: train without `resume_from_checkpoint` to start afresh, or point it at a checkpoint folder "
                f"that has a `{_STATE_FILE}`."
            )
        if skipped:
            logger.warning(
                f"Skipped incomplete checkpoint(s) {', '.join(skipped)} (no readable `{_STATE_FILE}`: the run was "
                f"probably killed while saving); resuming from {path}. Delete them to silence this message."
            )
        return path
    path = Path(resume_from_checkpoint)
    if is_complete_checkpoint(path):
        return str(path)
    last, _ = last_complete_checkpoint(path.parent if path.name.startswith(PREFIX_CHECKPOINT_DIR) else output_dir)
    what = "does not exist" if not path.exists() else f"is incomplete: it has no readable `{_STATE_FILE}`"
    hint = f"resume from {last} (the last complete one)" if last else "train without `resume_from_checkpoint`"
    raise CheckpointError(
        f"`resume_from_checkpoint={str(resume_from_checkpoint)!r}` {what} (a run killed while saving leaves such a "
        f"folder behind). Fix: {hint}, or pass `resume_from_checkpoint=True` to pick the last complete checkpoint."
    )
