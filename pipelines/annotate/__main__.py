import sys

from pipelines.annotate.cli import main

sys.exit(main())
