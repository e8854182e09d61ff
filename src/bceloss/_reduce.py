"""Reductions: one denominator, one finish.

'none' keeps the elementwise loss; 'sum' adds it up; 'mean' divides the sum by the number of
elements kept (not by the sum of the weights, as every reference framework does);
'weighted_mean' by the sum of the kept elements' weights. The sum runs in the accumulation
dtype (float64 where the library has it) and the result is rounded once to the call's dtype.
What differs between libraries (how a sum is formed, how a lazy array is rounded) is asked of
the call's adapter (`call.backend`).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np


def finish(total: float, denominator, reduction: str, dtype) -> np.ndarray:
    """The NumPy result from the exact `total` of the block sums (`_summation.combine`) and
    the reduction's `denominator` (`denominator`'s, or the kernel's): divided in float64 (0
    kept: 0 / 0 = NaN), rounded once to `dtype`. The kernels and the command line's streams
    finish here, so their results are the library's to the last bit."""
    total = np.float64(total)
    if reduction == "sum" or (type(denominator) is int and denominator > 0):
        value = total if reduction == "sum" else total / denominator
        if abs(value) <= _LARGEST.get(dtype, 0.0):  # the usual case: nothing to warn of
            return np.asarray(value, dtype=dtype)
    with np.errstate(all="ignore"):  # nothing kept: NaN; a float16 sum may overflow to inf
        if reduction != "sum":
            total = total / np.float64(denominator)
        return np.asarray(total).astype(dtype)


# the largest finite float32 and float64, by dtype and by scalar type
_LARGEST = {
    key: float(np.finfo(t).max) for t in (np.float32, np.float64) for key in (t, np.dtype(t))
}


def loss(call, l):
    """The reduced elementwise loss `l`, rounded to the call's dtype: the loss's result."""
    xp, backend = call.xp, call.backend
    value = l if call.reduction == "none" else reduced(call, l)
    return backend.as_result(xp, backend.round(xp, value, call.dtype))


def reduced(call, l):
    """The reduced elementwise loss `l` in the accumulation dtype, before any rounding."""
    xp, backend = call.xp, call.backend
    acc = backend.accumulator(xp, l)
    keep = None if call.where is None else xp.broadcast_to(call.where, call.shape)
    total = backend.total(xp, l, keep, acc)
    if isinstance(total, float):  # NumPy's exact sum (`_summation`) is a Python float
        total = xp.asarray(total, dtype=acc)
    if call.reduction == "sum":
        return total
    n = denominator(call, acc)
    if isinstance(n, int) and n == 0:
        return xp.full((), math.nan, dtype=acc, device=array_api_compat.device(l))
    return total / n  # 'weighted_mean' with weights adding up to 0: 0 / 0 = NaN


def denominator(call, acc):
    """What 'mean' divides the sum by, the number of elements kept, or 'weighted_mean', the
    sum of their weights broadcast to the loss's shape (the number kept when weight is None).

    A Python number where nothing is masked and on NumPy (a float32 gradient divided by it
    stays float32); else a 0-d array (lazy on Dask): the adapter's `count` and `total`.
    """
    xp, backend = call.xp, call.backend
    weighted = call.reduction == "weighted_mean" and call.weight is not None
    if call.where is None and not weighted:
        return math.prod(call.shape)
    keep = None if call.where is None else xp.broadcast_to(call.where, call.shape)
    if not weighted:
        return backend.count(xp, keep, acc)
    w = xp.broadcast_to(xp.astype(call.weight, acc), call.shape)
    return backend.total(xp, w, keep, acc)


def counts(call) -> bool:
    """Whether the reduction divides by the number of elements kept: 'mean', and
    'weighted_mean' without a weight (which is 'mean', its gradient where nothing is kept
    included: 0)."""
    return call.reduction == "mean" or (call.reduction == "weighted_mean" and call.weight is None)


def gradient(call, g, like, dtype):
    """The gradient `g` of the elementwise loss as that of the reduced loss, summed back to
    the shape of `like` (a broadcast argument), in `dtype`."""
    xp, backend = call.xp, call.backend
    if call.reduction == "weighted_mean" and call.weight is not None:
        # divided in the accumulation dtype: the weights' sum may be beyond the dtype's range
        # (weights near its largest number), where w g is not
        acc = backend.accumulator(xp, g)
        g = xp.astype(g, acc) / denominator(call, acc)
    elif counts(call):
        n = denominator(call, backend.accumulator(xp, g))
        # nothing kept: every gradient is 0
        g = g / (max(n, 1) if isinstance(n, int) else xp.where(n > 0, n, xp.ones_like(n)))
    extra = len(call.shape) - like.ndim
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    squeezed = tuple(i for i, (n, m) in enumerate(zip(g.shape, like.shape, strict=True)) if n != m)
    if squeezed:
        g = xp.sum(g, axis=squeezed, keepdims=True)
    return backend.as_result(xp, backend.round(xp, g, dtype))
