"""The `bceloss` command (also `python -m bceloss`): a thin shell over the library.

    bceloss eval PREDICTIONS LABELS [options]   the loss over files, streamed (or on Dask)
    bceloss demo                                 the reference frameworks' examples, a training
    bceloss bench [args]                         the benchmarks of `bceloss.bench`

It parses arguments, opens the files (`_io`), hands them to `_stream` and prints. Bad input
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import numpy as np

from bceloss import _io, _stream

USAGE_ERROR = 2
SRC_HELP = "FILE or FILE:COL[,COL...] (.npy, .npz as FILE:name, .csv, .parquet)"


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only for long runs."""

    DELAY = 0.5  # seconds before the bar appears: short runs print nothing
    EVERY = 0.1  # seconds between redraws

    def __init__(self, total: int, stream, enabled: bool = True) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = enabled and stream.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def __call__(self, rows: int) -> None:
        """Count `rows` more rows done."""
        self.done += rows
        now = time.monotonic()
        if not self.enabled or now - self.start < self.DELAY or now - self.last < self.EVERY:
            return
        self.last, self.drawn = now, True
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * share)
        self.stream.write(f"\r[{bar:<30}] {share:6.1%}  {self.done:,} of {self.total:,} rows")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


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
    p.add_argument("--flavor", choices=tuple(_stream.FLAVORS), default="torch")
    p.add_argument("--per-label", action="store_true", help="also the loss of each label")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32", "float64"))
    p.add_argument(
        "--chunk-size",
        metavar="ROWS",
        type=int,
        default=_stream.DEFAULT_CHUNK_ROWS,
        help="rows read at a time (rounded up to whole summation blocks; default %(default)s)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="a dask.distributed scheduler")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bceloss", description="Binary cross-entropy losses over files, exact."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _eval_parser(sub)
    sub.add_parser("demo", help="the reference frameworks' examples and a short training")
    sub.add_parser("bench", help="the benchmarks (bceloss.bench); arguments are passed on")
    return parser


def _number(value: np.ndarray) -> str:
    return str(value[()])


def _json_number(value: np.ndarray) -> float:
    return float(value)


def run_eval(args, out=None, err=None) -> int:
    """Evaluate the parsed `bceloss eval` arguments and print the result."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if args.pos_weight is not None and args.probs:
        print("bceloss eval: --pos-weight needs logits; drop --probs", file=err)
        return USAGE_ERROR
    if args.chunk_size < 1:
        print("bceloss eval: --chunk-size must be a positive number of rows", file=err)
        return USAGE_ERROR
    try:
        sources = {
            what: None if spec is None else _io.open_source(spec, what=what)
            for what, spec in [
                ("predictions", args.predictions),
                ("labels", args.labels),
                ("weight", args.weight),
                ("pos_weight", args.pos_weight),
            ]
        }
        job = _stream.plan(
            **sources,
            probs=args.probs,
            reduction=args.reduction,
            flavor=args.flavor,
            per_label=args.per_label,
            dtype=args.dtype,
            chunk_rows=args.chunk_size,
        )
        progress = Progress(job.rows, err, enabled=not args.json)
        try:
            if args.scheduler:
                result = _stream.evaluate_on_cluster(job, args.scheduler, progress)
            else:
                result = _stream.evaluate(job, progress)
        finally:
            progress.close()
    except _io.InputError as e:
        print(f"bceloss eval: {e}", file=err)
        return USAGE_ERROR
    if args.json:
        record = {
            "loss": _json_number(result.loss),
            "elements": result.elements,
            "rows": job.rows,
            "labels": job.width,
            "reduction": args.reduction,
            "dtype": str(result.loss.dtype),
        }
        if result.per_label is not None:
            record["per_label"] = [_json_number(v) for v in result.per_label]
            record["label_names"] = list(result.names)
        print(json.dumps(record), file=out)
    else:
        print(_number(result.loss), file=out)
        if result.per_label is not None:
            width = max(len(n) for n in result.names)
            for name, value in zip(result.names, result.per_label, strict=True):
                print(f"  {name:<{width}}  {_number(value)}", file=out)
    return 0


def demo() -> None:
    """Print the reference frameworks' documented examples and a few steps of training."""
    import bceloss

    f32 = np.float32
    x = np.array([[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]], f32)
    y = np.array([[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]], f32)
    print("BCEWithLogitsLoss, MindSpore's example (documented 0.3463612):")
    print("   ", bceloss.BCEWithLogitsLoss()(x, y))
    x = np.array([5.0, 1.0, 3.0], f32)
    y = np.array([1.0, 0.0, 1.0], f32)
    print("binary_cross_entropy_with_logits, Paddle's example (documented 0.45618808):")
    print("   ", bceloss.binary_cross_entropy_with_logits(x, y))
    p = np.array([0.2, 0.7, 0.1], f32)
    y = np.array([0.0, 1.0, 0.0], f32)
    w = np.array([1.0, 2.0, 2.0], f32)
    print("binary_cross_entropy with weight (documented 0.38240486; exact 0.382404837):")
    print("   ", bceloss.binary_cross_entropy(p, y, w))

    print("Logistic regression on 2 features, 5 steps of gradient descent:")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 2)).astype(f32)
    labels = (features @ np.array([2.0, -1.0], f32) > 0).astype(f32)
    coef = np.zeros(2, f32)
    step = bceloss.value_and_grad(bceloss.binary_cross_entropy_with_logits)
    for i in range(5):
        loss, grad_logits = step(features @ coef, labels)
        coef -= 2.0 * (features.T @ grad_logits)
        print(f"    step {i}: loss {float(loss):.6f}")


def _bench(argv: list[str]) -> int:
    if importlib.util.find_spec("bceloss.bench") is None:
        print("bceloss bench: the benchmark module bceloss.bench is not installed", file=sys.stderr)
        return USAGE_ERROR
    from bceloss import bench

    return bench.main(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the `bceloss` command on `argv` (default: the process's arguments); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark's own parser
        return _bench(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on a usage error, 0 after --help
        return int(e.code or 0)
    if args.command == "demo":
        demo()
        return 0
    return run_eval(args)
