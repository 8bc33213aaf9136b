"""The command line's error boundary: a mistake ends in one `error: <message>` line on stderr, not a traceback.

What is caught: every `MaskedSFTError` (our own messages, which name the value and the fix) and the predictable
failures from the libraries below: `OSError` (a missing file, a model or tokenizer the Hub client can't find, the Hub
unreachable or offline) and `ValueError` (e.g. a Hub name that is not a valid repo id, a TrainingArguments
combination transformers refuses). Anything else is a bug and keeps its traceback. `--debug` anywhere on the command
line, or `TRL_MASKED_SFT_DEBUG=1`, lets every error through with its traceback.

Our messages name config fields the Python way (`` `max_length` ``, `` `masked_row_policy='drop'` ``); at the command
line the same hint reads `` `--max_length` ``, `` `--masked_row_policy drop` `` (`as_flags`), for the fields that are
flags of the command that ran.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from collections.abc import Iterable

from ..errors import MaskedSFTError

__all__ = ["DEBUG_ENV", "EXPECTED", "as_flags", "pop_debug", "report"]

#: Environment variable that shows the traceback of every error, as `--debug` does.
DEBUG_ENV = "TRL_MASKED_SFT_DEBUG"
#: The errors reported as one `error:` line; see the module docstring.
EXPECTED = (MaskedSFTError, OSError, ValueError)
_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]+))?`")


def pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug`, and whether tracebacks were asked for (the flag or `TRL_MASKED_SFT_DEBUG=1`)."""
    rest = [arg for arg in argv if arg != "--debug"]
    wanted = len(rest) < len(argv) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return rest, wanted


def _flag_value(text: str) -> str | None:
    """A Python literal as it is typed after a flag (`'drop'` → `drop`, `False` → `false`), or None when it is not
    a plain literal (an expression, a dict, `None`)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return shlex.quote(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return " ".join(shlex.quote(str(v)) for v in value)
    return None


def as_flags(message: str, flags: Iterable[str]) -> str:
    """`message` with each backticked config field that is one of `flags` written as the flag: `` `max_length` `` →
    `` `--max_length` ``, `` `masked_row_policy='drop'` `` → `` `--masked_row_policy drop` ``. Other backticked
    text (columns, Python calls, values that are not plain literals) is left as it is."""
    flags = set(flags)

    def rewrite(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        if value is None:
            return f"`--{name}`"
        typed = _flag_value(value)
        return match.group(0) if typed is None else f"`--{name} {typed}`"

    return _FIELD.sub(rewrite, message)


def report(error: BaseException, flags: Iterable[str] = ()) -> int:
    """Print `error` as `error: <message>` on stderr (whole, with hints in flag form) and return the exit code, 1."""
    if isinstance(error, MaskedSFTError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    print(f"error: {as_flags(message, flags)}", file=sys.stderr)
    if not isinstance(error, MaskedSFTError):
        print(f"(add --debug, or set {DEBUG_ENV}=1, to see the traceback)", file=sys.stderr)
    return 1
