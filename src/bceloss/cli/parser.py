"""The `bceloss` command (also `python -m bceloss`): its arguments and which command runs.

    bceloss eval PREDICTIONS LABELS [options]   the loss over files, streamed (or on Dask)
    bceloss demo                                 the reference frameworks' examples, a training
    bceloss bench                                where the benchmark is (not in the package)

`main` parses the arguments and hands them to `eval_command.run_eval` or `demo.demo`.
argparse's usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from bceloss.cli import stream
from bceloss.cli.demo import demo
from bceloss.cli.eval_command import USAGE_ERROR, run_eval

BENCH_SCRIPT = "python benchmarks/bench_bce.py in a source checkout (not installed)"
SRC_HELP = "FILE or FILE:COL[,COL...] (.npy, .npz as FILE:name, .csv, .parquet)"


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="the loss of predictions against labels stored in files",
        description="The BCE loss of PREDICTIONS against LABELS, read from files in chunks "
        "(bounded memory) and summed exactly as the library sums. Each source is " + SRC_HELP,
    )
    p.add_argument("predictions", metavar="PREDICTIONS", help="logits (probabilities: --probs)")
    p.add_argument("labels", metavar="LABELS", help="targets in [0, 1], one column per label")
    p.add_argument("--weight", metavar="SRC", help="one per row, per element or per label")
    p.add_argument("--pos-weight", metavar="SRC", help="one per label (or per row/element)")
    p.add_argument("--probs", action="store_true", help="predictions are probabilities")
    p.add_argument("--reduction", choices=("mean", "sum"), default="mean")
    p.add_argument("--flavor", choices=tuple(stream.FLAVORS), default="torch")
    p.add_argument("--per-label", action="store_true", help="also the loss of each label")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32", "float64"))
    p.add_argument(
        "--chunk-size",
        metavar="ROWS",
        type=int,
        default=stream.DEFAULT_CHUNK_ROWS,
        help="rows read at a time (rounded up to whole summation blocks; default %(default)s)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="a dask.distributed scheduler")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `bceloss` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="bceloss", description="Binary cross-entropy losses over files, exact."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _eval_parser(sub)
    sub.add_parser("demo", help="the reference frameworks' examples and a short training")
    sub.add_parser("bench", help="where the benchmark is: " + BENCH_SCRIPT)
    return parser


def _bench() -> int:
    # The benchmark is a script of the repository, not a module of the package: say where.
    print(f"bceloss bench: the benchmark is {BENCH_SCRIPT}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the `bceloss` command on `argv` (default: the process's arguments); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # whatever follows (the benchmark's options) gets the same answer
        return _bench()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on a usage error, 0 after --help
        return int(e.code or 0)
    if args.command == "demo":
        demo()
        return 0
    return run_eval(args)
