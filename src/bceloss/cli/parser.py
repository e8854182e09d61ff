"""The `bceloss` command (also `python -m bceloss`): its arguments and which command runs.

    bceloss eval PREDICTIONS LABELS [options]   the loss over files, streamed (or on Dask)
    bceloss eval --sample [options]              the same on the sample shipped in the package
    bceloss demo                                 the reference frameworks' examples, a training
    bceloss bench                                where the benchmark is (not in the package)

`main` parses the arguments and hands them to `eval_command.run_eval` or `demo.demo`.
argparse's usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from bceloss import __version__
from bceloss.cli import sources, stream
from bceloss.cli.demo import demo
from bceloss.cli.eval_command import USAGE_ERROR, run_eval

BENCH_SCRIPT = "python benchmarks/bench_bce.py in a source checkout (not installed)"
SRC_HELP = "FILE or FILE:COL[,COL...] (.npy, .npz as FILE:name, .csv, .parquet)"


def _eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="the loss of predictions against labels stored in files",
        usage="%(prog)s [options] PREDICTIONS LABELS\n       %(prog)s [options] --sample",
        description="The BCE loss of PREDICTIONS against LABELS, read from files in chunks "
        "(bounded memory) and summed exactly as the library sums. Each source is "
        + SRC_HELP
        + ". `bceloss eval --sample` evaluates the sample shipped in the package instead.",
    )
    # optional for argparse, so that --sample can stand for both; main requires them otherwise
    name, logits, labels = sources.SAMPLE
    p.add_argument(
        "predictions", metavar="PREDICTIONS", nargs="?", help="logits (probabilities: --probs)"
    )
    p.add_argument(
        "labels", metavar="LABELS", nargs="?", help="targets in [0, 1], one column per label"
    )
    p.add_argument(
        "--sample",
        action="store_true",
        help=f"evaluate the sample shipped in the package instead of PREDICTIONS LABELS: the "
        f"columns {logits} against {labels} of its {name} (569 tumours), as "
        f"`bceloss eval {name}:{logits} {name}:{labels}` would; prints 0.09643331520293881",
    )
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
    p.add_argument(
        "--allow-out-of-range-labels",
        action="store_true",
        help="evaluate labels outside [0, 1] (refused by default: their loss can be negative)",
    )
    p.add_argument(
        "--max-columns",
        metavar="N",
        type=int,
        default=sources.DEFAULT_MAX_COLUMNS,
        help="refuse a file of more columns (default %(default)s)",
    )
    p.add_argument(
        "--max-line-bytes",
        metavar="N",
        type=int,
        default=sources.DEFAULT_MAX_LINE_BYTES,
        help="refuse a CSV file with a longer line (default %(default)s)",
    )
    return p


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="bceloss", description="Binary cross-entropy losses over files, exact."
    )
    parser.add_argument("--version", action="version", version=f"bceloss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    eval_parser = _eval_parser(sub)
    sub.add_parser("demo", help="the reference frameworks' examples and a short training")
    sub.add_parser("bench", help="where the benchmark is: " + BENCH_SCRIPT)
    return parser, eval_parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `bceloss` command and its subcommands."""
    return _parsers()[0]


def _bench() -> int:
    # The benchmark is a script of the repository, not a module of the package: say where.
    print(f"bceloss bench: the benchmark is {BENCH_SCRIPT}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the `bceloss` command on `argv` (default: the process's arguments); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # whatever follows (the benchmark's options) gets the same answer
        return _bench()
    parser, eval_parser = _parsers()
    try:
        args = parser.parse_args(argv)
        if args.command == "eval" and not args.sample:  # then both are required, as argparse says
            named = {"PREDICTIONS": args.predictions, "LABELS": args.labels}
            if missing := [metavar for metavar, spec in named.items() if spec is None]:
                eval_parser.error("the following arguments are required: " + ", ".join(missing))
    except SystemExit as e:  # argparse exits 2 on a usage error, 0 after --help
        return int(e.code or 0)
    if args.command == "demo":
        demo()
        return 0
    return run_eval(args)
