"""`python -m bceloss`: the same as the `bceloss` command (see `bceloss.cli`)."""

import sys

from bceloss.cli import main

if __name__ == "__main__":
    sys.exit(main())
