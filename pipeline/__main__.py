"""`python -m pipeline` is the same as `btmri`."""

import sys

from pipeline.cli import main

sys.exit(main())
