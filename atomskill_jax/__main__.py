"""`python -m atomskill_jax ARGS` runs the `atomskill` command: how the demo and sweeps
start their stages in the same interpreter, with no console script on PATH needed."""

import sys

from atomskill_jax.cli import main

sys.exit(main())
