"""`python -m rls3 ...` (what `accelerate launch -m rls3 run ...` starts): the `rls3` command."""

import sys

from rls3.cli import main

sys.exit(main())
