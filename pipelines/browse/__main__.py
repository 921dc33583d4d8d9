"""python -m pipelines.browse RUN --out DIR (the same as `pite browse`)."""

import sys

from pipelines.browse.cli import main

sys.exit(main())
