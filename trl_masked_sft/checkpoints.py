"""Resuming from checkpoints that are complete: a run killed while saving leaves a partial `checkpoint-N` behind.

`Trainer` writes `trainer_state.json` last when it saves a checkpoint (after the weights, optimizer, scheduler and RNG
states). A checkpoint is complete when it holds model weights (full, sharded or adapter; FSDP's or DeepSpeed's own
folders count), a `trainer_state.json` that `Trainer` can resume from, and the optimizer and scheduler as a pair or
not at all (`save_only_model`). `transformers.trainer_utils.get_last_checkpoint` picks the highest-numbered folder
whatever it holds, and resuming from a partial one fails inside `Trainer` (or, with only the weights written, restarts
the schedule from step 0). A complete checkpoint can still be corrupt (a disk filled up, a copy cut short): the
weights, optimizer, scheduler and RNG files it holds are checked too, cheaply (the safetensors header against the file
size, the zip directory of `torch.save` files), and the bad file is named. Under several processes, which checkpoint
every rank resumes from is agreed in `distributed.agree_on_checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import fields
from pathlib import Path

from transformers import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import CheckpointError
from .logs import get_logger

__all__ = [
    "checkpoint_problem",
    "checkpoint_steps",
    "check_checkpoint_fits",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "last_sound_checkpoint",
    "resolve_resume_checkpoint",
]

logger = get_logger(__name__)

_STATE_FILE = "trainer_state.json"
#: the files (or folder name prefixes) of which one holds the model weights, as `Trainer._load_from_checkpoint` looks
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_ENGINE_FOLDERS = ("pytorch_model_fsdp", "global_step")  # FSDP's sharded state, DeepSpeed's engine state
_PAIR = ("optimizer.pt", "scheduler.pt")
_STATE_FIELDS = frozenset(f.name for f in fields(TrainerState))
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _safetensors_problem(path: Path) -> str | None:
    """Why a `.safetensors` file can't be loaded (header unreadable, or shorter than its header says), or None."""
    try:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError, MemoryError, OverflowError):
        return "its header is unreadable"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    end = max(
        (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t), default=0
    )
    if path.stat().st_size < 8 + size + end:
        return f"it is cut short ({path.stat().st_size} bytes, its header says {8 + size + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a `torch.save` file (a zip archive) can't be loaded, or None. Small files are CRC-checked too."""
    try:
        with zipfile.ZipFile(path) as archive:
            if path.stat().st_size < 256 * 2**20 and archive.testzip() is not None:
                return "a member fails its checksum"
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        with path.open("rb") as handle:
            if handle.read(1) == b"\x80" and path.stat().st_size > 64:
                return None  # torch's legacy (pre-1.6) format: a pickle stream, not a zip; left to torch
        return f"it is not a readable torch file ({error})"
    return None


def _state_problem(state: Path) -> str | None:
    """Why `trainer_state.json` can't be resumed from, or None. Unreadable means incomplete (it is written last)."""
    try:
        parsed = json.loads(state.read_text())
    except (OSError, ValueError):
        return f"it has no readable `{_STATE_FILE}`"
    if not isinstance(parsed, dict):
        return f"`{state}` is not a JSON object (got {type(parsed).__name__})"
    for key in ("global_step", "train_batch_size"):  # `Trainer` computes with both when it resumes
        value = parsed.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            got = f"`{key}` is {value!r}" if key in parsed else f"it has no `{key}`"
            return f"`{state}` is corrupt: {got} (a non-negative int that `Trainer` needs to resume)"
    unknown = sorted(set(parsed) - _STATE_FIELDS)
    if unknown:
        return f"`{state}` is corrupt: keys {unknown} are not fields of this transformers' `TrainerState`"
    return None


def _missing_files(root: Path, names: set[str]) -> str | None:
    """What a checkpoint lacks that `Trainer` needs (weights; an optimizer without scheduler or back), or None."""
    engine = any(name.startswith(_ENGINE_FOLDERS) and (root / name).is_dir() for name in names)
    adapters = any((root / name / weights).is_file() for name in names for weights in _WEIGHTS[4:])
    if not (names & set(_WEIGHTS) or engine or adapters):
        return (
            f"it holds no model weights (no `{_WEIGHTS[0]}`, `{_WEIGHTS[2]}`, adapter or sharded weights): the "
            "weights were not saved on this node, or the save was cut"
        )
    present = [name for name in _PAIR if name in names]
    if len(present) == 1 and not engine:  # DeepSpeed keeps the optimizer in its own folder
        other = _PAIR[1 - _PAIR.index(present[0])]
        return f"it has `{present[0]}` but no `{other}`, which are saved together"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What makes `path` unusable to resume from, naming the file, or None when it is complete and sound.

    Incomplete (the message starts with "it "): no readable `trainer_state.json` (written last), no model weights, or
    an optimizer without its scheduler (or the reverse). Corrupt: a `trainer_state.json` without the numbers
    `Trainer` resumes from, or a weights, optimizer, scheduler or RNG file that is truncated or unreadable.
    """
    root = Path(path)
    problem = _state_problem(root / _STATE_FILE)
    if problem is not None:
        return problem
    files = sorted(root.iterdir())
    problem = _missing_files(root, {file.name for file in files})
    if problem is not None:
        return problem
    for file in files:
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(file)
        else:
            continue
        if problem:
            return f"`{file}` is corrupt: {problem}"
    return None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` holds weights, a sound `trainer_state.json` (written last by `Trainer`) and no corrupt file."""
    return Path(path).is_dir() and checkpoint_problem(path) is None


def check_checkpoint_fits(path: str | os.PathLike, model) -> None:
    """Raise `CheckpointError` when the checkpoint's `model.safetensors` holds weights of another model: a tensor the
    model has with another shape, or no tensor name in common. (Adapter checkpoints are left to PEFT.)"""
    weights = Path(path) / "model.safetensors"
    if model is None or not weights.is_file():
        return
    with weights.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t["shape"]) for name, t in header.items() if name != "__metadata__"}
    common = saved.keys() & shapes.keys()
    wrong = next((n for n in sorted(common) if saved[n] != shapes[n]), None)
    if wrong is not None or not common:
        detail = (
            f"`{wrong}` has shape {list(saved[wrong])} there and {list(shapes[wrong])} in this model"
            if wrong
            else f"none of its {len(saved)} tensor names is a weight of this model"
        )
        raise CheckpointError(
            f"The checkpoint {path} holds the weights of another model: {detail}. Fix: resume with the model (and "
            "tokenizer) that wrote it, or train without `resume_from_checkpoint` / with another `output_dir`."
        )


def _checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def checkpoint_steps(output_dir: str | os.PathLike) -> list[int]:
    """The steps of the `checkpoint-N` folders in `output_dir`, complete or not, lowest first."""
    return [step for step, _ in _checkpoints(output_dir)]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, list[str]]:
    """`(the highest-step complete checkpoint or None, the incomplete or corrupt checkpoints above it)`."""
    path, skipped = last_sound_checkpoint(output_dir)
    return path, list(skipped)


def last_sound_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, dict[str, str]]:
    """`(the highest-step complete and sound checkpoint or None, {each one skipped above it: why})`."""
    skipped: dict[str, str] = {}
    for _, path in reversed(_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), skipped
        skipped[str(path)] = problem
    return None, skipped


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | bool | None, output_dir: str, model=None
) -> str | bool | None:
    """What `Trainer.train(resume_from_checkpoint=...)` should get: a complete checkpoint, or None to start afresh.

    `True` picks the last *complete and sound* checkpoint in `output_dir`, saying which ones it skipped and why (the
    file); a path must be a complete, sound checkpoint (of `model`, when given). Raises `CheckpointError` with the
    fix otherwise.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return resume_from_checkpoint
    if resume_from_checkpoint is True:
        path, skipped = last_sound_checkpoint(output_dir)
        if path is None:
            found = f" (incomplete: {_listed(skipped)})" if skipped else ""
            raise CheckpointError(
                f"`resume_from_checkpoint=True` but `output_dir` ({output_dir}) holds no complete checkpoint{found}. "
                "Fix: train without `resume_from_checkpoint` to start afresh, or point it at a checkpoint folder "
                f"that holds the weights and a `{_STATE_FILE}`."
            )
        if skipped:
            logger.warning(
                f"Skipped incomplete checkpoint(s) {_listed(skipped)}; falling back to the previous complete "
                f"checkpoint: resuming from {path}. Delete the skipped ones to silence this message."
            )
        check_checkpoint_fits(path, model)
        return path
    if not isinstance(resume_from_checkpoint, (str, os.PathLike)):
        raise CheckpointError(
            f"`resume_from_checkpoint` must be a checkpoint folder, True or None, got "
            f"{type(resume_from_checkpoint).__name__} {resume_from_checkpoint!r}. Fix: e.g. 'out/checkpoint-500', "
            "or True for the last complete checkpoint in `output_dir`."
        )
    path = Path(resume_from_checkpoint)
    problem = checkpoint_problem(path) if path.is_dir() else None
    if path.is_dir() and problem is None:
        check_checkpoint_fits(path, model)
        return str(path)
    last, _ = last_sound_checkpoint(path.parent if path.name.startswith(PREFIX_CHECKPOINT_DIR) else output_dir)
    if not path.exists():
        what = "does not exist"
    elif not path.is_dir():
        what = "is a file, not a checkpoint folder"
    elif problem.startswith("it "):
        what = f"is incomplete: {problem} (a run killed while saving leaves such a folder behind)"
    else:
        what = f"can't be resumed from: {problem}"
    hint = f"resume from {last} (the last complete one)" if last else "train without `resume_from_checkpoint`"
    raise CheckpointError(
        f"`resume_from_checkpoint={str(resume_from_checkpoint)!r}` {what}. Fix: {hint}, or pass "
        "`resume_from_checkpoint=True` to pick the last complete checkpoint."
    )


def _listed(skipped: dict[str, str]) -> str:
    return "; ".join(f"{path} ({problem})" for path, problem in skipped.items())
