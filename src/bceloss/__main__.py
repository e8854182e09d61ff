"""`python -m bceloss`: the same as the `bceloss` command (see `bceloss._cli`)."""

import sys

from bceloss._cli import main

if __name__ == "__main__":
    sys.exit(main())
