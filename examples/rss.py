"""Peak resident memory (RSS) per phase of a run, for the example's memory report.

On Linux the kernel keeps the process's peak RSS (`VmHWM` in `/proc/self/status`) and lets the process reset it
(writing 5 to `/proc/self/clear_refs`), so each phase gets its own peak. Where that is not possible (macOS, Windows,
a kernel that refuses the reset) each phase reports the peak of the whole process so far (`resource.getrusage`),
and `per_phase` is False. Child processes (the model conversion) report their own peak through `add`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PhasePeaks", "current_peak_bytes", "release_freed_memory", "reset_peak"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def current_peak_bytes() -> int:
    """This process's peak RSS in bytes since the start or the last `reset_peak`."""
    try:
        with open(_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def release_freed_memory() -> bool:
    """Give the memory the C allocator holds free back to the system: glibc's `malloc_trim(0)`, which also returns
    free pages inside the heap. Freed tensors stay with the allocator otherwise, so a long run's RSS creeps up step
    by step (docs/homework.md, memory). False where there is no glibc (macOS, Windows, musl): nothing is done."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def reset_peak() -> bool:
    """Restart this process's peak RSS at its current RSS; False where the system does not allow it."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PhasePeaks:
    """`with peaks.phase("training"): ...` records the peak RSS of each phase, in bytes, in `peaks.phases`."""

    def __init__(self) -> None:
        self.phases: dict[str, int] = {}
        self.children: set[str] = set()
        self.per_phase = reset_peak()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run a phase: what earlier phases freed is given back first (`release_freed_memory`), then its peak."""
        release_freed_memory()
        if self.per_phase:
            reset_peak()
        try:
            yield
        finally:
            self.phases[name] = max(self.phases.get(name, 0), current_peak_bytes())

    def add(self, name: str, peak_bytes: int) -> None:
        """Record the peak of a phase that ran in a child process."""
        self.phases[name] = max(self.phases.get(name, 0), int(peak_bytes))
        self.children.add(name)

    @property
    def overall(self) -> int:
        """The largest peak of any phase: what the whole run needed at most at one time."""
        return max(self.phases.values(), default=0)

    def report(self) -> dict[str, object]:
        """`{"phases_gb": {phase: GB}, "peak_gb": GB, "per_phase": bool, "child_processes": [phase, ...]}`."""
        return {
            "phases_gb": {name: round(peak / 1e9, 3) for name, peak in self.phases.items()},
            "peak_gb": round(self.overall / 1e9, 3),
            "per_phase": self.per_phase,
            "child_processes": sorted(self.children),
        }

    def summary(self) -> str:
        parts = [
            f"{name}{' (child process)' if name in self.children else ''} {peak / 1e9:.2f}"
            for name, peak in self.phases.items()
        ]
        scope = "" if self.per_phase else " (each the whole process's peak so far: this system cannot reset it)"
        return f"Peak RSS (GB) per phase{scope}: {', '.join(parts)}; the run's peak {self.overall / 1e9:.2f} GB."
