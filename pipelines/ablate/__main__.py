"""python -m pipelines.ablate --config CONFIG (the same as `pite ablate`)."""

import sys

from pipelines.ablate.cli import main

sys.exit(main())
