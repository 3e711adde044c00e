"""`python -m vecmig`: the same as the `vecmig` command."""

import sys

from vecmig.harness.cli import main

sys.exit(main())
