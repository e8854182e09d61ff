"""The benchmark of README's ## Speed: `python benchmarks/bench_bce.py [--repeats N] ...`.

The same as `python -m bceloss.bench` (bceloss/bench.py holds the code, so that an installed
bceloss can print the table on the user's machine).
"""

import sys

from bceloss.bench import main

if __name__ == "__main__":
    sys.exit(main())
