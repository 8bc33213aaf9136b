"""The package's loggers: they follow transformers' verbosity and speak from the main process only.

`transformers.utils.logging.get_logger("trl_masked_sft.x")` returns a plain Python logger outside the `transformers`
tree, so `transformers.logging.set_verbosity_info()` (or `TRANSFORMERS_VERBOSITY`) never reached it, and under
`torchrun` every rank printed each message. Here the package's root logger `trl_masked_sft` writes to stderr itself:

- a record shows when its level is at least transformers' verbosity (WARNING by default, so warnings show and INFO
  lines appear after `set_verbosity_info()`);
- only the main process (global rank 0) prints, so a message said once per process is said once per run;
- records still reach handlers attached to our loggers (tests, users) whatever the verbosity.

`warn(message)` is `warnings.warn(message, MaskedSFTWarning)` on the main process only, for warnings every rank would
raise alike (the setup, the data after the pre-flight audit).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from .errors import MaskedSFTWarning

__all__ = ["get_logger", "is_main_process", "warn"]

_ROOT = "trl_masked_sft"


def is_main_process() -> bool:
    """True on global rank 0, or without several processes (the process group's rank, else torchrun's `RANK`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class _Stderr(logging.StreamHandler):
    """Writes to the current `sys.stderr` (pytest and notebooks replace it after import)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always reads sys.stderr
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        from transformers.utils import logging as hf_logging

        return record.levelno >= hf_logging.get_verbosity() and is_main_process() and super().filter(record)


def _configure_root() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not any(isinstance(handler, _Stderr) for handler in root.handlers):
        root.addHandler(_Stderr())
        root.setLevel(logging.DEBUG)  # every record is made; the handler decides what shows
        root.propagate = False  # as transformers' own loggers: no second copy through the root logger
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger for module `name` (`trl_masked_sft.<module>`), under the configured package root."""
    _configure_root()
    return logging.getLogger(name)


def warn(message: str, *, stacklevel: int = 1) -> None:
    """`warnings.warn(message, MaskedSFTWarning)` on the main process; nothing on the other ranks.

    `stacklevel` counts from the caller of `warn`, as for `warnings.warn`.
    """
    if is_main_process():
        warnings.warn(message, MaskedSFTWarning, stacklevel=stacklevel + 1)
