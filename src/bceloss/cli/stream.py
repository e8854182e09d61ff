"""A loss over files, chunk by chunk: the CLI's one door into the library.

Every chunk of rows goes through a loss function of the library (its checks, its formula).
Its elementwise loss is cut into the library's summation blocks (`_summation`): chunks start
on a multiple of BLOCK elements (of BLOCK rows for per-label sums), so the blocks are those
the library forms on the whole array, and since block sums combine with `math.fsum` in any
order, the result is the library's on the whole arrays, to the last bit, whatever the chunk
size and however many workers compute the blocks (`cluster` hands row ranges of a `Job` to
`evaluate_rows` on Dask workers and combines their `Partial`s with `merge` and `finish`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The CLI's only entry points into the library's internals are here, in this module, and
# nowhere else in bceloss.cli: `_evaluate.elementwise` (the elementwise loss of a call
# record), `_summation.BLOCK`, `_summation.block_sums` and `_summation.combine` (the library's
# exact summation), `_reduce.finish` (the library's finish: divide by the denominator, round
# to the result's dtype), the `_bceloss_bind` attribute of the public loss functions (their
# checks, giving the call record) and the record's `dtype`.
from bceloss import _evaluate, _summation
from bceloss._reduce import finish as finish_sums
from bceloss.cli.sources import InputError, Source

FLAVORS = {
    "torch": "bceloss",
    "mindspore": "bceloss.compat.mindspore",
    "paddle": "bceloss.compat.paddle",
}
DEFAULT_CHUNK_ROWS = 1 << 16


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a name of `_dtypes.FLOAT_NAMES` (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class Job:
    """One evaluation: the sources, the options, and the rows each chunk holds.

    weight and pos_weight are a Source streamed with the predictions (one value per row or
    per element), a small array applied to every row (one value, or one per label), or None.
    check_labels: refuse labels outside [0, 1] (whose "loss" is no cross-entropy: it can be
    negative); --allow-out-of-range-labels turns it off.
    """

    predictions: Source
    labels: Source
    weight: Source | np.ndarray | None
    pos_weight: Source | np.ndarray | None
    probs: bool
    reduction: str
    flavor: str
    per_label: bool
    dtype: str | None
    chunk_rows: int
    check_labels: bool = True

    @property
    def rows(self) -> int:
        """The number of rows of every streamed source."""
        return self.predictions.rows

    @property
    def width(self) -> int:
        """The number of labels (columns) per row."""
        return len(self.predictions.names)


def _operand(src: Source | None, what: str, rows: int, width: int):
    if src is None:
        return None
    if src.rows == rows:
        if len(src.names) not in (1, width):
            msg = (
                f"{what} {src.label} has {len(src.names)} columns; expected 1 "
                f"(one per row) or {width} (one per label)"
            )
            raise InputError(msg)
        return src
    if src.rows * len(src.names) in (1, width) and 1 in (src.rows, len(src.names)):
        whole = np.concatenate(list(src.chunks(0, src.rows, max(src.rows, 1))))
        return whole.reshape(-1)
    msg = (
        f"{what} {src.label} has {src.rows} rows; predictions have {rows} "
        f"(give one value per row, or one value per label)"
    )
    raise InputError(msg)


def plan(
    predictions: Source,
    labels: Source,
    weight: Source | None = None,
    pos_weight: Source | None = None,
    *,
    probs: bool = False,
    reduction: str = "mean",
    flavor: str = "torch",
    per_label: bool = False,
    dtype: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    check_labels: bool = True,
) -> Job:
    """Check that the sources fit together and fix the chunk size.

    The chunk size is rounded up so that a chunk holds a multiple of BLOCK elements (of BLOCK
    rows with per_label): chunks then start where the library's summation blocks do. It is
    first cut to the number of rows: a chunk larger than the file changes nothing.
    """
    rows, width = predictions.rows, len(predictions.names)
    if labels.rows != rows:
        msg = f"labels {labels.label} have {labels.rows} rows; predictions have {rows}"
        raise InputError(msg)
    if len(labels.names) != width:
        msg = f"labels {labels.label} have {len(labels.names)} columns; predictions have {width}"
        raise InputError(msg)
    step = _summation.BLOCK
    if not per_label:
        step //= math.gcd(step, width)
    return Job(
        predictions=predictions,
        labels=labels,
        weight=_operand(weight, "weight", rows, width),
        pos_weight=_operand(pos_weight, "pos_weight", rows, width),
        probs=probs,
        reduction=reduction,
        flavor=flavor,
        per_label=per_label,
        dtype=dtype,
        chunk_rows=max(1, -(-min(chunk_rows, max(rows, 1)) // step)) * step,
        check_labels=check_labels,
    )


@dataclass(frozen=True)
class Partial:
    """The block sums of some rows: of the whole loss, and of each label's column.

    Attributes:
      sums: float64 block sums of the elementwise loss.
      label_sums: (labels, blocks) float64 block sums of each column, or None.
      elements: the number of elements added.
      dtype: the result's dtype (None before any chunk).
    """

    sums: np.ndarray
    label_sums: np.ndarray | None
    elements: int
    dtype: np.dtype | None


def merge(parts: list[Partial]) -> Partial:
    """The block sums of several disjoint row ranges together."""
    labels = [p.label_sums for p in parts if p.label_sums is not None]
    return Partial(
        sums=np.concatenate([p.sums for p in parts]),
        label_sums=np.concatenate(labels, axis=1) if labels else None,
        elements=sum(p.elements for p in parts),
        dtype=next((p.dtype for p in parts if p.dtype is not None), None),
    )


def _loss_function(job: Job):
    try:
        module = importlib.import_module(FLAVORS[job.flavor])
    except ImportError:
        msg = f"the {job.flavor} flavour ({FLAVORS[job.flavor]}) is not available"
        raise InputError(msg) from None
    name = "binary_cross_entropy" if job.probs else "binary_cross_entropy_with_logits"
    return getattr(module, name)._bceloss_bind


def _cast(a: np.ndarray, job: Job) -> np.ndarray:
    if job.dtype is None:
        return a
    with np.errstate(over="ignore"):  # a value beyond the dtype's range becomes inf, silently
        return a.astype(numpy_dtype(job.dtype), copy=False)


def _chunks(job: Job, start: int, stop: int):
    """(predictions, labels, weight, pos_weight) for each chunk of rows [start, stop).

    Arrays as the library takes them: (rows, labels), or 1-D with a single label; a per-row
    weight is a (rows, 1) column; a constant (one per label) is 1-D and broadcasts.
    """
    sources = (job.predictions, job.labels, job.weight, job.pos_weight)
    streams = [s.chunks(start, stop, job.chunk_rows) for s in sources if isinstance(s, Source)]
    at = start
    for chunk in zip(*streams, strict=True):
        if job.check_labels:
            _check_labels(job, chunk[1], at)
        at += len(chunk[0])
        chunk = iter(chunk)
        out = []
        for s in sources:
            if isinstance(s, Source):
                a = _cast(next(chunk), job)
                out.append(a.reshape(-1) if job.width == 1 else a)
            else:
                out.append(None if s is None else _cast(s, job))
        yield out


def _check_labels(job: Job, y: np.ndarray, at: int) -> None:
    """Refuse labels outside [0, 1], as the files hold them (NaN passes: it shows as NaN)."""
    if not y.size:
        return
    if np.fmin.reduce(y, axis=None) >= 0 and np.fmax.reduce(y, axis=None) <= 1:
        return
    outside = y[(y < 0) | (y > 1)]
    msg = (
        f"labels {job.labels.label} hold values outside [0, 1]: from {outside.min()} to "
        f"{outside.max()} (rows {at} to {at + len(y) - 1}); their loss is not a cross-entropy "
        f"(it can be negative): --allow-out-of-range-labels computes it anyway"
    )
    raise InputError(msg)


def evaluate_rows(
    job: Job, start: int, stop: int, on_rows: Callable[[int], None] | None = None
) -> Partial:
    """The block sums of rows [start, stop); start must be a multiple of job.chunk_rows."""
    bind = _loss_function(job)
    sums, label_sums, elements, dtype = [], [], 0, None
    at = start
    for x, y, w, pw in _chunks(job, start, stop):
        try:
            if job.probs:
                call = bind(x, y, w, job.reduction)
            else:
                call = bind(x, y, w, job.reduction, pos_weight=pw)
        except (TypeError, ValueError) as e:
            where = f" (rows {at} to {at + len(x) - 1})" if len(x) else ""
            hint = "; --dtype converts what the files hold" if isinstance(e, TypeError) else ""
            msg = f"{e}{where}{hint}"
            raise InputError(msg) from None
        loss = _evaluate.elementwise(call, whole_size=job.rows * job.width)[0]
        sums.append(_summation.block_sums(loss))
        if job.per_label:
            columns = loss.reshape(len(x), -1)
            label_sums.append(np.stack([_summation.block_sums(c) for c in columns.T]))
        elements += loss.size
        dtype = call.dtype
        at += len(x)
        if on_rows is not None:
            on_rows(len(x))
    return Partial(
        sums=np.concatenate(sums),
        label_sums=np.concatenate(label_sums, axis=1) if job.per_label else None,
        elements=elements,
        dtype=dtype,
    )


@dataclass(frozen=True)
class Result:
    """The loss (a 0-d array of the result's dtype), its element count, the per-label losses."""

    loss: np.ndarray
    elements: int
    per_label: list[np.ndarray] | None
    names: tuple[str, ...]


def _reduce(sums, count: int, reduction: str, dtype) -> np.ndarray:
    # as the library finishes: the exact combination of the block sums, divided by the
    # element count for 'mean' (NaN when empty), rounded once to the result's dtype
    return finish_sums(_summation.combine(sums), count, reduction, dtype)


def finish(job: Job, part: Partial) -> Result:
    """The losses from the block sums of every row."""
    per_label = None
    if part.label_sums is not None:
        per_label = [_reduce(s, job.rows, job.reduction, part.dtype) for s in part.label_sums]
    return Result(
        loss=_reduce(part.sums, part.elements, job.reduction, part.dtype),
        elements=part.elements,
        per_label=per_label,
        names=job.predictions.names,
    )


def evaluate(job: Job, on_rows: Callable[[int], None] | None = None) -> Result:
    """The losses, computed chunk by chunk in this process."""
    return finish(job, evaluate_rows(job, 0, job.rows, on_rows))
