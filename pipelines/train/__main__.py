"""python -m pipelines.train --config CONFIG [key=value ...] (the same as `pite train`)."""

import sys

from pipelines.train.run import main

sys.exit(main())
