"""`bceloss eval`: check the parsed arguments, open the sources, evaluate, print.

The sources are opened by `sources`, evaluated in this process by `stream` or on a Dask
cluster by `cluster`, with a `progress` bar on a terminal. Bad input is one line on stderr
and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import sys

import numpy as np

from bceloss.cli import cluster, sources, stream
from bceloss.cli.progress import Progress

USAGE_ERROR = 2


def _number(value: np.ndarray) -> str:
    return str(value[()])


def _json_number(value: np.ndarray) -> float:
    return float(value)


def _evaluate(args, predictions: str, labels: str, err) -> tuple[stream.Job, stream.Result]:
    limits = sources.Limits(max_columns=args.max_columns, max_line_bytes=args.max_line_bytes)
    opened = {
        what: None if spec is None else sources.open_source(spec, what=what, limits=limits)
        for what, spec in [
            ("predictions", predictions),
            ("labels", labels),
            ("weight", args.weight),
            ("pos_weight", args.pos_weight),
        ]
    }
    job = stream.plan(
        **opened,
        probs=args.probs,
        reduction=args.reduction,
        flavor=args.flavor,
        per_label=args.per_label,
        dtype=args.dtype,
        chunk_rows=args.chunk_size,
        check_labels=not args.allow_out_of_range_labels,
    )
    progress = Progress(job.rows, err, enabled=not args.json)
    try:
        if args.scheduler:
            result = cluster.evaluate_on_cluster(job, args.scheduler, progress)
        else:
            result = stream.evaluate(job, progress)
    finally:
        progress.close()
    return job, result


def run_eval(args, out=None, err=None) -> int:
    """Evaluate the parsed `bceloss eval` arguments and print the result."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if args.sample and (args.predictions is not None or args.labels is not None):
        print(
            "bceloss eval: --sample replaces PREDICTIONS and LABELS; give one or the other",
            file=err,
        )
        return USAGE_ERROR
    if args.pos_weight is not None and args.probs:
        print("bceloss eval: --pos-weight needs logits; drop --probs", file=err)
        return USAGE_ERROR
    for option, value in [
        ("--chunk-size", args.chunk_size),
        ("--max-columns", args.max_columns),
        ("--max-line-bytes", args.max_line_bytes),
    ]:
        if value < 1:
            print(f"bceloss eval: {option} must be a positive number", file=err)
            return USAGE_ERROR
    try:
        with contextlib.ExitStack() as files:
            specs = (args.predictions, args.labels)
            if args.sample:  # the shipped file, found in the installed package
                specs = files.enter_context(sources.sample())
            job, result = _evaluate(args, *specs, err)
    except sources.InputError as e:
        print(f"bceloss eval: {e}", file=err)
        return USAGE_ERROR
    except OSError as e:  # a file that became unreadable, or vanished, while being read
        where = f"{e.filename}: " if e.filename else ""
        print(f"bceloss eval: {where}cannot read ({e.strerror or type(e).__name__})", file=err)
        return USAGE_ERROR
    except MemoryError:
        named = " and ".join(s for s in (args.predictions, args.labels) if s) or "the sample"
        print(
            f"bceloss eval: out of memory evaluating {named} (--chunk-size {args.chunk_size}); "
            "a smaller --chunk-size needs less",
            file=err,
        )
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
