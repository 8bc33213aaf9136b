"""The `trl-masked-sft` command (`train`, `inspect`, `audit`): `main`, the one entry point.

Inside: `main` (the subcommands and their arguments), `sources` (the data and tokenizers named on the command line),
`errors` (a library error reported as an `error:` line naming the flag).
"""

from .main import main

__all__ = ["main"]
