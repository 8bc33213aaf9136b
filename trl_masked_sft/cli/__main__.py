"""`python -m trl_masked_sft.cli COMMAND ...`, the same as `python -m trl_masked_sft` and the `trl-masked-sft` script."""

import sys

from .main import main

sys.exit(main())
