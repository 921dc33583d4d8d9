"""python -m pipelines.evaluate TASK ... (the same as `pite evaluate`)."""

import sys

from pipelines.evaluate.cli import main

sys.exit(main())
