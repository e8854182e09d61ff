"""The planning of a kernel call: which calls the fused kernels take, and how their arrays
are laid out for them.

Every NumPy call of the BCE family of floating or integral arrays is taken (label smoothing,
masks, 'weighted_mean' and the focal loss included), except a Paddle weight that widens the
loss. The input and the target go flat and C-contiguous (a strided one is copied, the one
temporary the size of the input it costs), in native byte order, float16 and bfloat16 as their
bits. Weight and pos_weight of the input's shape, of a trailing part of it, or scalar are read
in place, periodically; any other broadcast is materialised once. Under a mask (`where`) a
block is BLOCK *kept* elements (`kept_blocks` finds where each begins), so a masked sum adds
up exactly what the sum of the kept elements alone adds up.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from bceloss import _dtypes, _summation

BLOCK = _summation.BLOCK
# A weight that repeats with a short period is tiled to at least this many elements, so the
# inner loop runs over long stretches.
MIN_PERIOD = 1024
# float16 and bfloat16 travel as their bits: the kernels tell them apart by the integer type.
BITS = {"float16": np.uint16, "bfloat16": np.int16}


@dataclass(slots=True)  # not frozen: its __init__ is half the cost
class Plan:
    """How a call runs in the kernel: flat arrays as stored, periodic weights, its blocks."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    p: np.ndarray | None
    keep: np.ndarray | None  # the `where` mask, flat, as uint8
    wd: np.ndarray | None  # the weight in float64 (periodic), for 'weighted_mean'
    starts: np.ndarray  # block b covers the flat elements starts[b] .. starts[b + 1]
    kept: int  # elements kept (all without a mask)
    smooth: tuple | None  # (1 - s, s / 2) in the compute dtype, None without smoothing
    focal: tuple | None  # the focal loss's (alpha or None, gamma), None for BCE
    ct: type  # the compute dtype
    n: int


@functools.cache  # (a training loop asks of the same dtypes again and again)
def storage(dtype) -> np.dtype:
    """The dtype in which the kernel reads or writes an array of `dtype` (halves as bits)."""
    return np.dtype(BITS.get(_dtypes.dtype_name(dtype), dtype))


def flat(a: np.ndarray) -> np.ndarray:
    """a, flat, C-contiguous, in native byte order, halves as bits (a view where it can)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    stored = storage(a.dtype)
    a = a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)
    return a if stored is a.dtype else a.view(stored)


def _readable(a: np.ndarray) -> bool:
    return _readable_dtype(a.dtype)


@functools.cache
def _readable_dtype(d) -> bool:
    return _dtypes.dtype_name(d) in BITS or d.kind in "fb" or (d.kind in "iu" and d.itemsize != 2)


@functools.cache
def _compute_type(dtype) -> type:
    """The scalar type the kernel computes a loss of `dtype` in."""
    return np.dtype(_dtypes.compute_dtype(np, dtype)).type


_UNSUPPORTED = object()


def periodic(a, shape, n, ct):
    """weight or pos_weight as a flat array whose element i % size weighs element i of the
    flat input (None when absent), or _UNSUPPORTED for a dtype the kernel does not read."""
    if a is None:
        return None  # the kernel is specialised without it
    if not isinstance(a, np.ndarray) or not _readable(a):
        return _UNSUPPORTED
    dims = tuple(a.shape)
    while dims and dims[0] == 1:
        dims = dims[1:]
    if dims != tuple(shape[len(shape) - len(dims) :]):
        # broadcast along an inner axis, e.g. a (rows, 1) weight: materialised (a temporary
        # the size of the input), so that every layout gets the kernel's numbers
        return flat(np.broadcast_to(np.asarray(a, dtype=ct), shape))
    size = math.prod(dims)
    if size == n:
        return flat(a)
    periodic = np.asarray(a, dtype=ct).reshape(-1)
    if size < MIN_PERIOD:
        periodic = np.tile(periodic, -(-MIN_PERIOD // size))
    return flat(periodic)


def plan(call, min_size: int = 1) -> Plan | None:
    """The kernel's plan for a validated NumPy call (`_dispatch.kernel_plan` asks), or None
    when the array-API formula runs: a Paddle weight widening the loss, an array NumPy cannot
    store here, or fewer than `min_size` elements kept."""
    x, y = call.input, call.target
    n = math.prod(call.shape)
    if (
        n < max(min_size, 1)
        or tuple(x.shape) != call.shape  # a Paddle weight widening the loss
        or not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray))
        or not (_readable(x) and _readable(y))
    ):
        return None
    ct = _compute_type(call.dtype)
    w = periodic(call.weight, call.shape, n, ct)
    p = periodic(call.pos_weight if call.logits else None, call.shape, n, ct)
    weighted_mean = call.reduction == "weighted_mean" and call.weight is not None
    wd = periodic(call.weight, call.shape, n, np.float64) if weighted_mean else None
    if w is _UNSUPPORTED or p is _UNSUPPORTED or wd is _UNSUPPORTED:
        return None
    if call.where is None:
        keep, kept = None, n
        starts = _block_starts(n)
    else:
        # a broadcast mask is materialised: one byte an element
        keep = np.ascontiguousarray(np.broadcast_to(call.where, call.shape)).reshape(-1)
        keep = keep.view(np.uint8)
        starts, kept = _kept_blocks(keep)
        if kept < min_size:
            return None
    s = call.label_smoothing
    smooth = (ct(1 - s), ct(s / 2)) if s else None  # as _formulas.smoothed rounds them
    focal = None  # gamma = 0 without alpha is BCE with logits: its kernel, to the last bit
    if call.gamma is not None and not (call.gamma == 0 and call.alpha is None):
        # gamma in float64: m^gamma is computed in float64 (a float32 0.3 would be 4e-8 off)
        focal = (None if call.alpha is None else ct(call.alpha), np.float64(call.gamma))
    return Plan(flat(x), flat(y), w, p, keep, wd, starts, int(kept), smooth, focal, ct, n)


def downscaled(call, pl: Plan) -> Plan | None:
    """pl with every weight times 2^-e, e the binary exponent of the largest |weight|: for a
    'weighted_mean' whose products w l or weights' sum overflowed the compute dtype, where
    sum(w l) / sum(w) is the same ratio. A power of two scales exactly (but where a scaled
    weight is subnormal), so the result is the one an unbounded dtype would round to. None
    where that cannot help: no weight above 1, NaN, or integral weights (below 2^64)."""
    if pl.wd is None or not _dtypes.is_floating(np, call.weight.dtype):
        return None
    weights = np.abs(np.asarray(call.weight, np.float64))
    if call.where is None:
        largest = float(np.max(weights))
    else:  # the kept elements' (a dropped one may hold anything)
        keep = np.broadcast_to(call.where, call.shape)
        weights = np.broadcast_to(weights, call.shape)
        largest = float(np.max(weights, where=keep, initial=0.0))
    if not 1 < largest < math.inf:
        return None
    factor = 2.0 ** -math.frexp(largest)[1]

    def scaled(a):
        if a.dtype.kind in "iu":  # a half weight as its bits: scaled in float32 (exact)
            a = a.view(call.weight.dtype).astype(np.float32)
        return flat(a * a.dtype.type(factor))

    return dataclasses.replace(pl, w=scaled(pl.w), wd=scaled(pl.wd))


@functools.lru_cache(maxsize=64)
def _block_starts(n: int) -> np.ndarray:
    """Where each block of BLOCK elements begins, then n (remembered: a training loop asks
    for the same sizes again and again; the kernels only read it)."""
    starts = np.minimum(np.arange(-(-n // BLOCK) + 1, dtype=np.int64) * BLOCK, n)
    starts.setflags(write=False)
    return starts


def _kept_blocks(keep: np.ndarray) -> tuple[np.ndarray, int]:
    """(starts, kept): where each block of BLOCK kept elements begins in the flat mask
    `keep`, the first at 0 and a last entry n, and how many elements are kept."""
    from bceloss._kernels._native import kept_blocks

    starts = np.empty(keep.size // BLOCK + 2, np.int64)
    blocks, kept = kept_blocks(keep, starts)
    return starts[: blocks + 1], kept
