"""`python -m trl_masked_sft COMMAND ...`, the same as the `trl-masked-sft` console script."""

import sys

from .cli import main

sys.exit(main())
