"""`python -m serving`: the model server, the same as `btmri serve`."""

import sys

from serving.cli import main

sys.exit(main())
