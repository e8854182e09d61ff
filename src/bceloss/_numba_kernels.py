"""Fused single-pass kernels for the BCE family on NumPy arrays, on every core (numba's
OpenMP threads, or the helper threads of `_threads` in a forked process).

One pass over memory computes the elementwise loss and, for `value_and_grad`, both
gradients, with weight and pos_weight read in place (the usual layouts are never
materialised) and float16/bfloat16 widened to float32 on the fly. The math is `_formulas`'
term for term, with `_fastmath`'s vectorisable exp and log; the tests hold it to `_formulas`
and the oracle.

Work is cut into the blocks of `_summation.BLOCK` elements: each block's loss is summed in
float64 in `_summation.block_sums`' order (LANES interleaved partial sums, which the SIMD loop
follows at full speed), and the block sums are combined by `_summation.combine`, so a total
does not depend on the number of threads, and equals `_summation.total` of the elementwise
loss to the last bit. The kernels compile on first use (never at import) and are cached
on disk by numba: next to this file, or in the user's cache directory when that is read-only
(`NUMBA_CACHE_DIR` overrides both).

`plan(call)` says whether a validated call runs here: every NumPy call of the BCE family of
floating or integral arrays, label smoothing, masks, 'weighted_mean' and the focal loss
included, except a Paddle weight that widens the loss. Weight and pos_weight of the input's
shape, of a trailing part of it, or scalar are read in place; any other broadcast is
materialised once, and strided inputs are copied. Under a mask (`where`) a block is BLOCK
*kept* elements (`_kept_blocks` finds where each begins), so a masked sum adds up exactly what
the sum of the kept elements alone adds up. `loss` and `loss_and_grad` (from `_evaluate`,
above `_dispatch`'s size threshold) and `elementwise` (at every size, for streams and Dask
blocks, so that they add up to the library's bits) then run it; PyTorch CPU tensors come here
as NumPy views (`_torch.numpy_twin`).
"""

from __future__ import annotations

import functools
import math
import os
from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic, overload

from bceloss import _dtypes, _formulas, _reduce, _summation, _threads
from bceloss._fastmath import (
    FLAGS,
    bfloat16_to_float32,
    constants,
    exp_neg,
    float32_round_to_odd,
    float32_to_bfloat16,
    float_to_half,
    half_to_float32,
    log,
    log1p_neg,
    log1p_unit,
    mul_add,
    plus_log1p_unit,
    times,
    weighted,
)
from bceloss._focal_terms import focal_terms

BLOCK = _summation.BLOCK
LANES = _summation.LANES
CHUNKS_PER_THREAD = 8
# Calls of at most this many elements run on the calling thread alone: starting and joining
# the other threads costs about what they save there (OpenMP's threads spin as they wait;
# see the README); with the helper threads of `_threads`, which sleep, up to HELPED_SIZE
# (waking one, and handing the GIL to it and back, costs 15 to 20 us).
SERIAL_SIZE = 2 * BLOCK
HELPED_SIZE = 12 * BLOCK
PIECE = 1024  # elements of a summation block computed at a time (a multiple of LANES)
ROWS = PIECE // LANES
GROUP = 256  # mask elements `_kept_blocks` counts at a time as it looks for a block's start
# A weight that repeats with a short period is tiled to at least this many elements, so the
# inner loop runs over long stretches.
MIN_PERIOD = 1024
# float16 and bfloat16 travel as their bits: the kernels tell them apart by the integer type.
_BITS = {"float16": np.uint16, "bfloat16": np.int16}

Limits = namedtuple("Limits", "log_floor grad_eps")
_LIMITS = {
    t: Limits(f(_formulas.LOG_FLOOR), f(_formulas.GRAD_EPS))
    for t, f in ((types.float32, np.float32), (types.float64, np.float64))
}


def limits(like):
    """The clamps of the probabilities form, typed like `like`."""


@overload(limits)
def _limits(like):
    c = _LIMITS.get(like)
    return None if c is None else (lambda like: c)


def decode(value, like):
    """An element as stored (float, integer, bool, or float16/bfloat16 bits) in like's type."""


@overload(decode)
def _decode(value, like):
    conv = {types.float32: np.float32, types.float64: np.float64}.get(like)
    if conv is None:
        return None
    if value == types.uint16:
        return lambda value, like: conv(half_to_float32(value))
    if value == types.int16:
        return lambda value, like: conv(bfloat16_to_float32(value))
    if isinstance(value, (types.Float, types.Integer, types.Boolean)):
        return lambda value, like: conv(value)
    return None


def encode(value, dst):
    """A computed value as stored in the array `dst` (float, or float16/bfloat16 bits)."""


@overload(encode)
def _encode(value, dst):
    # float64 reaches the half types through a float32 rounded to odd: rounded once
    narrow = float32_round_to_odd if value == types.float64 else np.float32
    if dst.dtype == types.uint16:
        return lambda value, dst: float_to_half(narrow(value))
    if dst.dtype == types.int16:
        return lambda value, dst: float32_to_bfloat16(narrow(value))
    conv = {types.float32: np.float32, types.float64: np.float64}.get(dst.dtype)
    return None if conv is None else (lambda value, dst: conv(value))


def present(a):
    """Whether an optional array is given: a constant of the compiled code (None or not)."""


@overload(present)
def _present(a):
    absent = a is None or isinstance(a, types.NoneType)
    return lambda a: not absent


def ignored(y, label):
    """Whether target y is the ignored label; constant False where there is none (None)."""


@overload(ignored)
def _ignored(y, label):
    if label is None or isinstance(label, types.NoneType):
        return lambda y, label: False
    return lambda y, label: y == label


def smoothed(y, smooth):
    """(y', 1 - y') for the smoothed target, as `_formulas.smoothed`: smooth is None (no
    smoothing, a constant of the compiled code) or (1 - s, s / 2) in y's type."""


@overload(smoothed, inline="always")
def _smoothed(y, smooth):
    if smooth is None or isinstance(smooth, types.NoneType):
        return lambda y, smooth: (y, constants(y).one - y)
    return lambda y, smooth: (
        y * smooth[0] + smooth[1],
        (constants(y).one - y) * smooth[0] + smooth[1],
    )


def chained(g, smooth):
    """d/dy through the smoothing: g (1 - s), or g itself without smoothing."""


@overload(chained, inline="always")
def _chained(g, smooth):
    if smooth is None or isinstance(smooth, types.NoneType):
        return lambda g, smooth: g
    return lambda g, smooth: g * smooth[0]


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def logits_terms(x, y, w, p, has_p, ignore, smooth=None):
    """(loss, d/dx, d/dy) of BCE with logits at one element, as `_formulas.logits`.

    NaN in x travels through exp_neg into every result; an infinite x gives exp(-|x|) = 0.
    """
    c = constants(x)
    e = exp_neg(abs(x))
    log1p_e = log1p_unit(e)  # log1p(exp(-|x|))
    relu_pos = x if x > c.zero else c.zero  # noqa: FURB136 (a select: vectorises)
    relu_neg = -x if x < c.zero else c.zero
    ys, q = smoothed(y, smooth)
    py = p * ys  # p is 1 without a pos_weight: p y = y exactly
    nonneg = x >= c.zero
    # (1 - y) max(x, 0) + p y max(-x, 0) + lw log1p(exp(-|x|)), lw = (1 - y) + p y, one of
    # the first two terms 0: softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) makes every term
    # >= 0 for y in [0, 1]. p (y |x|): p y first would underflow for a subnormal p or y.
    relu_part = times(q if nonneg else ys, abs(x), c)
    if has_p:
        relu_part = relu_part if nonneg else times(p, relu_part, c)
        # lw = q + p y fused in every loop: LLVM fuses a product into an add only where
        # nothing else uses it, and p y is used again with the gradient (the loss would
        # move by an ulp with the gradients computed beside it)
        loss = relu_part + mul_add(p, ys, q) * log1p_e
    else:  # lw = 1
        loss = plus_log1p_unit(relu_part, e)
    # lw sigmoid(x) - p y = (1 - y) sigmoid(x) - p y sigmoid(-x) (1 - sigmoid(x) = sigmoid(-x))
    r = c.one / (c.one + e)
    er = e * r
    gx = q * (r if nonneg else er) - py * (er if nonneg else r)
    # (p - 1) softplus(-x) - x = (p - 1) log1p(exp(-|x|)) + p max(-x, 0) - max(x, 0);
    # with p = 1 it is exactly -x.
    gy = chained((p - c.one) * log1p_e + times(p, relu_neg, c) - relu_pos, smooth)
    loss, gx, gy = weighted(w, loss, c), w * gx, weighted(w, gy, c)
    if has_p:
        # weight 0 wins over an infinite pos_weight, as in `_formulas.logits`: 0 unless x, y
        # or p is NaN (selects: the loop still vectorises)
        void = (w == c.zero) & ~(np.isnan(x) | np.isnan(y) | np.isnan(p))
        loss = c.zero if void else loss
        gx = c.zero if void else gx
        gy = c.zero if void else gy
    if ignored(y, ignore):
        loss = gx = gy = c.zero
    return loss, gx, gy


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def focal_ignoring(x, y, w, alpha, gamma, ignore):
    """`_focal_terms.focal_terms`, zero at an ignored label (Paddle's)."""
    loss, gx, gy = focal_terms(x, y, w, alpha, gamma)
    if ignored(y, ignore):
        loss = gx = gy = constants(x).zero
    return loss, gx, gy


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def probabilities_terms(x, y, w, smooth=None):
    """(loss, d/dx, d/dy) of BCE on probabilities at one element, as `_formulas.probabilities`.

    NaN in x travels through the logs (the clamps let it pass) into every result.
    """
    c = constants(x)
    lim = limits(x)
    log_x = log(x)
    # clamps as selects that let NaN pass (max() would not)
    log_x = lim.log_floor if log_x < lim.log_floor else log_x  # noqa: FURB136
    log_q = log1p_neg(x)
    log_q = lim.log_floor if log_q < lim.log_floor else log_q  # noqa: FURB136
    # both logs are <= 0: for y in [0, 1] the two terms add without cancelling
    ys, q = smoothed(y, smooth)
    loss = -(ys * log_x + q * log_q)
    den = x * (c.one - x)
    gx = (x - ys) / (lim.grad_eps if den < lim.grad_eps else den)  # noqa: FURB136
    gy = chained(log_q - log_x, smooth)
    return weighted(w, loss, c), w * gx, weighted(w, gy, c)


def period(a):
    """How many elements a periodic weight covers before it repeats (BLOCK for None)."""


@overload(period)
def _period(a):
    if a is None or isinstance(a, types.NoneType):
        return lambda a: BLOCK
    return lambda a: a.size


def window(a, start, count):
    """a[start : start + count] (None stays None)."""


@overload(window)
def _window(a, start, count):
    if a is None or isinstance(a, types.NoneType):
        return lambda a, start, count: None
    return lambda a, start, count: a[start : start + count]


def weight_at(a, k, like):
    """Element k of a weight window in like's type; 1 for None, a constant the compiler
    folds away (w * l becomes l): the kernels without weights run faster."""


@overload(weight_at, inline="always")
def _weight_at(a, k, like):
    if a is None or isinstance(a, types.NoneType):
        return lambda a, k, like: constants(like).one
    return lambda a, k, like: decode(a[k], like)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _segment(
    logits, grad, x, y, w, p, i0, jw, jp, m, k0, lbuf, gbuf, hbuf, divisor, ignore, smooth, focal
):  # fmt: skip
    # elements i0 .. i0 + m of the flat arrays, weights from jw and jp, into lbuf, gbuf and hbuf
    # at k0; grad: 0 the loss, 1 and d/dx, 2 and d/dy, the gradients divided by `divisor` (in
    # the loop, where the divider works beside the busier multiply-add units). Slices indexed
    # from 0 by the loop counter (unsigned: no negative-index check, which would make the
    # loads gathers), one loop per case (no branch inside) and every element read in the loop
    # itself (a helper returning the four defeats it): LLVM vectorises.
    like = lbuf[0]
    has_p = present(p)
    xs, ys, ws, ps = x[i0 : i0 + m], y[i0 : i0 + m], window(w, jw, m), window(p, jp, m)
    ls, gs, hs = lbuf[k0 : k0 + m], gbuf[k0 : k0 + m], hbuf[k0 : k0 + m]
    if focal is not None:  # (alpha, gamma) of the focal loss: pruned at compile time for BCE
        alpha, gamma = focal
        if grad == 2:
            for k in range(np.uint64(m)):
                xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
                ls[k], g, h = focal_ignoring(xi, yi, wi, alpha, gamma, ignore)
                gs[k], hs[k] = g / divisor, h / divisor
        elif grad == 1:
            for k in range(np.uint64(m)):
                xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
                ls[k], g, _ = focal_ignoring(xi, yi, wi, alpha, gamma, ignore)
                gs[k] = g / divisor
        else:
            for k in range(np.uint64(m)):
                xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
                ls[k] = focal_ignoring(xi, yi, wi, alpha, gamma, ignore)[0]
    elif logits:
        if grad == 2:
            for k in range(np.uint64(m)):
                xi, yi = decode(xs[k], like), decode(ys[k], like)
                wi, pi = weight_at(ws, k, like), weight_at(ps, k, like)
                ls[k], g, h = logits_terms(xi, yi, wi, pi, has_p, ignore, smooth)
                gs[k], hs[k] = g / divisor, h / divisor
        elif grad == 1:
            for k in range(np.uint64(m)):
                xi, yi = decode(xs[k], like), decode(ys[k], like)
                wi, pi = weight_at(ws, k, like), weight_at(ps, k, like)
                ls[k], g, _ = logits_terms(xi, yi, wi, pi, has_p, ignore, smooth)
                gs[k] = g / divisor
        else:
            for k in range(np.uint64(m)):
                xi, yi = decode(xs[k], like), decode(ys[k], like)
                wi, pi = weight_at(ws, k, like), weight_at(ps, k, like)
                ls[k] = logits_terms(xi, yi, wi, pi, has_p, ignore, smooth)[0]
    elif grad == 2:
        for k in range(np.uint64(m)):
            xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
            ls[k], g, h = probabilities_terms(xi, yi, wi, smooth)
            gs[k], hs[k] = g / divisor, h / divisor
    elif grad == 1:
        for k in range(np.uint64(m)):
            xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
            ls[k], g, _ = probabilities_terms(xi, yi, wi, smooth)
            gs[k] = g / divisor
    else:
        for k in range(np.uint64(m)):
            xi, yi, wi = decode(xs[k], like), decode(ys[k], like), weight_at(ws, k, like)
            ls[k] = probabilities_terms(xi, yi, wi, smooth)[0]


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _add_lanes(lanes, buf, count):
    # element k of buf into lane k % LANES, each lane a sequential float64 sum
    # (`_summation.block_sums`).
    if count == PIECE:
        # A whole piece: each lane runs down its ROWS elements in a register and is stored
        # once. The row loop has a constant trip count, so LLVM unrolls it and vectorises
        # across the lanes; updating the lanes in memory row after row instead waits on a
        # store-to-load round trip per row (3-4x the time).
        for j in range(LANES):
            acc = lanes[j]
            for r in range(ROWS):
                acc += np.float64(buf[r * LANES + j])
            lanes[j] = acc
        return
    # The lane count is read from the array here, not the constant: LLVM then vectorises the
    # lane loop instead of unrolling it into scalar adds.
    width = lanes.size
    rows = count // width
    for r in range(rows):
        row = buf[r * width : (r + 1) * width]
        for j in range(width):
            lanes[j] += np.float64(row[j])
    tail = buf[rows * width : count]
    for j in range(tail.size):
        lanes[j] += np.float64(tail[j])


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _add_kept(lanes, buf, keep, count, kept, packed):
    # the kept elements of buf, in order, into the lanes from lane `kept` % LANES on: the
    # lanes `_add_lanes` gives buf[keep] (a masked sum is the sum of the kept elements).
    # Returns the new number kept. They are packed into `packed` (float64, PIECE + LANES)
    # without a branch (each element is written, and overwritten by the next when dropped:
    # a branch on a random mask costs twice as much), behind kept % LANES zeros, then added
    # as `_add_lanes` adds: +0.0 leaves a lane as it is (a lane starts at +0.0, so it never
    # holds -0.0).
    phase = kept % lanes.size
    packed[:phase] = 0.0
    j = phase
    for k in range(count):
        packed[j] = buf[k]
        j += keep[k] != 0  # (a bool array's True may be any byte but 0)
    _add_lanes(lanes, packed, j)
    return kept + j - phase


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _fold(lanes):
    # the lanes' sum as a tree of halves (`_summation.block_sums`)
    width = lanes.size
    while width > 1:
        width //= 2
        for j in range(width):
            lanes[j] += lanes[j + width]
    return lanes[0]


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _zero_dropped(buf, keep, count, fill):
    # the elements a mask drops get `fill`: 0 for a loss, 0 / divisor for a gradient (as the
    # formula divides its zeros)
    for k in range(count):
        buf[k] = buf[k] if keep[k] else fill


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _weights_into(buf, w, start, count):
    # the (periodic) weight of elements start .. start + count, decoded in buf's type
    i = start
    while i < start + count:
        j = i % w.size
        m = min(start + count - i, w.size - j)
        src, dst = w[j : j + m], buf[i - start : i - start + m]
        for k in range(m):
            dst[k] = decode(src[k], buf[0])
        i += m


def piece_of(dst, buf, start, stop):
    """Where the kernel writes an output's elements start .. stop: dst[start:stop] itself
    where dst holds the computation type (and is wanted: not zero-size), else the scratch
    `buf`, which `flush` then encodes into dst."""


@overload(piece_of)
def _piece_of(dst, buf, start, stop):
    if dst.dtype == buf.dtype:
        return lambda dst, buf, start, stop: dst[start:stop] if dst.size else buf[: stop - start]
    return lambda dst, buf, start, stop: buf[: stop - start]


def flush(dst, start, buf, count):
    """dst[start : start + count] = buf[:count], encoded, where `piece_of` chose the buffer."""


@overload(flush, jit_options={"fastmath": FLAGS, "error_model": "numpy"})
def _flush(dst, start, buf, count):
    if dst.dtype == buf.dtype:  # written in place
        return lambda dst, start, buf, count: None

    def encoded(dst, start, buf, count):
        d = dst[start : start + count]
        for k in range(d.size):
            d[k] = encode(buf[k], dst)

    return encoded


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """counters[index] += value atomically (int64 array), with acquire and release ordering:
    the value before. What a thread wrote before adding is seen by one that reads after."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        counters, index, value = args
        array = context.make_array(signature.args[0])(context, builder, counters)
        slot = builder.gep(array.data, [index])
        return builder.atomic_rmw("add", slot, value, "acq_rel")

    return types.int64(counters, types.intp, types.int64), codegen


@intrinsic
def load_acquire(typingctx, counters, index):
    """counters[index] (int64 array), read with acquire ordering: what the thread that
    last added to it (`fetch_add`) wrote before is seen after."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        counters, index = args
        array = context.make_array(signature.args[0])(context, builder, counters)
        return builder.load_atomic(builder.gep(array.data, [index]), "acquire", 8)

    return types.int64(counters, types.intp), codegen


# The counters of a call, a cache line apart (64 bytes): chunks taken, chunks finished.
TAKEN, DONE, COUNTERS = 0, 8, 16
SPINS = 1 << 14  # counter reads before `finished` hands back to Python (to yield the core)


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _kernel(
    logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd, wsums,
    starts, proto, counters, chunks,
):  # fmt: skip
    # Block b covers the elements starts[b] .. starts[b + 1]: BLOCK of them, or BLOCK kept ones
    # under a mask `keep`. sums[b]: its loss's sum; wsums[b]: its weights' (wd), for
    # 'weighted_mean'. out, gx, gy: the elementwise loss and gradients (0 where not kept),
    # the gradients divided by `divisor`. Zero-size outputs are not computed.
    # The blocks go in `chunks` chunks: the calling thread and the helpers (`_threads`, in a
    # forked process) each take the next chunk as they come free, counted in `counters`.
    # Without the GIL, so that the helpers run beside it; `_helped` then waits for the
    # chunks they took (`finished`).
    _share(
        logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd, wsums,
        starts, proto, counters, chunks,
    )  # fmt: skip


@njit(cache=True, error_model="numpy", nogil=True)
def finished(counters, chunks):
    """Whether all `chunks` are finished, waiting (spinning) a little for chunks a helper
    is still computing: the writes of a finished chunk are visible after True."""
    spins = 0
    while load_acquire(counters, DONE) != chunks:
        spins += 1
        if spins == SPINS:
            return False
    return True


@njit(parallel=True, cache=True, fastmath=FLAGS, error_model="numpy")
def _team_kernel(
    logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd, wsums,
    starts, proto, counters, chunks, threads,
):  # fmt: skip
    # `_kernel` on a team of numba's OpenMP threads, each taking the next chunk as it comes
    # free: a thread the system holds up (a shared machine) delays a chunk or two, not its
    # whole share (numba's OpenMP and workqueue layers split a prange evenly up front,
    # whatever its chunk size). The join waits for every thread of the team.
    for _ in prange(threads):
        _share(
            logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd,
            wsums, starts, proto, counters, chunks,
        )  # fmt: skip


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _share(
    logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd, wsums,
    starts, proto, counters, chunks,
):  # fmt: skip
    # one thread's part of `_kernel`, a helper's whole: chunk after chunk of the blocks
    nblocks = starts.size - 1
    grad = 2 if gy.size else (1 if gx.size else 0)
    # a block is computed in pieces of PIECE elements, whose buffers stay in L1
    lbuf = np.empty(PIECE, proto.dtype)
    gbuf = np.empty(PIECE if grad else 1, proto.dtype)
    hbuf = np.empty(PIECE if grad == 2 else 1, proto.dtype)
    wbuf = np.empty(PIECE if wsums.size else 1)
    lanes, wlanes = np.empty(LANES), np.empty(LANES)
    packed = np.empty(PIECE + LANES if keep is not None else 1)
    chunk = fetch_add(counters, TAKEN, 1)
    while chunk < chunks:
        _chunk(
            logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd,
            wsums, starts, chunk * nblocks // chunks, (chunk + 1) * nblocks // chunks, grad,
            lbuf, gbuf, hbuf, wbuf, lanes, wlanes, packed,
        )  # fmt: skip
        fetch_add(counters, DONE, 1)
        chunk = fetch_add(counters, TAKEN, 1)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def _chunk(
    logits, x, y, w, p, keep, ignore, smooth, focal, divisor, out, gx, gy, sums, wd, wsums,
    starts, first, last, grad, lbuf, gbuf, hbuf, wbuf, lanes, wlanes, packed,
):  # fmt: skip
    # blocks first .. last of `_kernel`, with a thread's buffers
    terms = sums.size or out.size or grad
    zero = constants(lbuf[0]).zero
    for b in range(first, last):
        lanes[:] = 0.0
        wlanes[:] = 0.0
        kept = wkept = 0
        for start in range(starts[b], starts[b + 1], PIECE):
            stop = min(start + PIECE, starts[b + 1])
            count = stop - start
            # Results go straight into outputs of the computation type: a second pass
            # copying them from a buffer would cost more than the math (caches and
            # memory traffic), even with stores that bypass the caches.
            ls, gs = piece_of(out, lbuf, start, stop), piece_of(gx, gbuf, start, stop)
            hs = piece_of(gy, hbuf, start, stop)
            i = start
            while terms and i < stop:
                # a stretch along which the (periodic) weight and pos_weight are contiguous
                jw, jp = i % period(w), i % period(p)
                m = min(stop - i, period(w) - jw, period(p) - jp)
                _segment(
                    logits, grad, x, y, w, p, i, jw, jp, m, i - start, ls, gs, hs, divisor,
                    ignore, smooth, focal,
                )  # fmt: skip
                i += m
            if wsums.size:
                _weights_into(wbuf, wd, start, count)
            if keep is not None:  # (pruned at compile time without a mask)
                kw = keep[start:stop]
                if sums.size:
                    kept = _add_kept(lanes, ls, kw, count, kept, packed)
                if wsums.size:
                    wkept = _add_kept(wlanes, wbuf, kw, count, wkept, packed)
                if out.size:
                    _zero_dropped(ls, kw, count, zero)
                if grad:
                    _zero_dropped(gs, kw, count, zero / divisor)
                if grad == 2:
                    _zero_dropped(hs, kw, count, zero / divisor)
            else:
                if sums.size:
                    _add_lanes(lanes, ls, count)
                if wsums.size:
                    _add_lanes(wlanes, wbuf, count)
            flush(out, start, ls, count)
            flush(gx, start, gs, count)
            flush(gy, start, hs, count)
        if sums.size:
            sums[b] = _fold(lanes)
        if wsums.size:
            wsums[b] = _fold(wlanes)


@njit(cache=True, error_model="numpy", nogil=True)
def _kept_blocks(keep):
    """(starts, kept): where each block of BLOCK kept elements begins in the flat mask
    `keep` (uint8), the first at 0 and a last entry n, and how many elements are kept."""
    n = keep.size
    chunks = (n + BLOCK - 1) // BLOCK
    before = np.zeros(chunks + 1, np.int64)  # kept elements before each BLOCK of the input
    for j in range(chunks):
        part = keep[j * BLOCK : min(n, (j + 1) * BLOCK)]
        count = 0
        for k in range(part.size):
            count += part[k] != 0  # (a bool array's True may be any byte but 0)
        before[j + 1] = count
    for j in range(chunks):
        before[j + 1] += before[j]
    kept = before[chunks]
    nblocks = max(1, (kept + BLOCK - 1) // BLOCK)
    starts = np.empty(nblocks + 1, np.int64)
    starts[0], starts[nblocks] = 0, n
    for b in range(1, nblocks):
        # the (b BLOCK)-th kept element: in input block j, after `rank` kept ones there
        j = np.searchsorted(before, b * BLOCK, side="right") - 1
        rank = b * BLOCK - before[j]
        k = j * BLOCK
        while k + GROUP <= n:  # past whole groups holding no more than `rank` kept ones
            group, count = keep[k : k + GROUP], 0  # (a slice: the count vectorises)
            for i in range(GROUP):
                count += group[i] != 0
            if count > rank:
                break
            rank -= count
            k += GROUP
        while rank or not keep[k]:
            rank -= keep[k] != 0
            k += 1
        starts[b] = k
    return starts, kept


@dataclass(frozen=True)
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


def _bits(a: np.ndarray) -> np.ndarray:
    """a, flat, read-only (one kernel type whatever the caller's flags), halves as bits."""
    bits = _BITS.get(_dtypes.dtype_name(a.dtype))
    flat = a.reshape(-1) if bits is None else a.reshape(-1).view(bits)  # a new view, always
    flat.setflags(write=False)
    return flat


def _storable(a: np.ndarray) -> bool:
    name = _dtypes.dtype_name(a.dtype)
    if name in _BITS:
        return True
    return a.dtype.kind in "fb" or (a.dtype.kind in "iu" and a.dtype.itemsize != 2)


_UNSUPPORTED = object()


def _periodic(a, shape, n, ct):
    """weight or pos_weight as a flat array whose element i % size weighs element i of the
    flat input (None when absent), or _UNSUPPORTED for a dtype the kernel does not read."""
    if a is None:
        return None  # the kernel is specialised without it
    if not isinstance(a, np.ndarray) or not _storable(a):
        return _UNSUPPORTED
    dims = tuple(a.shape)
    while dims and dims[0] == 1:
        dims = dims[1:]
    if dims != tuple(shape[len(shape) - len(dims) :]):
        # broadcast along an inner axis, e.g. a (rows, 1) weight: materialised (a temporary
        # the size of the input), so that every layout gets the kernel's numbers
        return _bits(np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=ct), shape)))
    size = math.prod(dims)
    if size == n:
        return _bits(np.ascontiguousarray(a))
    flat = np.ascontiguousarray(np.asarray(a, dtype=ct).reshape(-1))
    if size < MIN_PERIOD:
        flat = np.tile(flat, -(-MIN_PERIOD // size))
    return _bits(flat)


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
        or not (_storable(x) and _storable(y))
    ):
        return None
    ct = np.dtype(_dtypes.compute_dtype(np, call.dtype)).type
    w = _periodic(call.weight, call.shape, n, ct)
    p = _periodic(call.pos_weight if call.logits else None, call.shape, n, ct)
    weighted_mean = call.reduction == "weighted_mean" and call.weight is not None
    wd = _periodic(call.weight, call.shape, n, np.float64) if weighted_mean else None
    if any(a is _UNSUPPORTED for a in (w, p, wd)):
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
    # a strided input is copied (the one temporary the size of the input it costs)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    s = call.label_smoothing
    smooth = (ct(1 - s), ct(s / 2)) if s else None  # as _formulas.smoothed rounds them
    focal = None  # gamma = 0 without alpha is BCE with logits: its kernel, to the last bit
    if call.gamma is not None and not (call.gamma == 0 and call.alpha is None):
        # gamma in float64: m^gamma is computed in float64 (a float32 0.3 would be 4e-8 off)
        focal = (_maybe(ct, call.alpha), np.float64(call.gamma))
    return Plan(_bits(x), _bits(y), w, p, keep, wd, starts, int(kept), smooth, focal, ct, n)


@functools.lru_cache(maxsize=64)
def _block_starts(n: int) -> np.ndarray:
    """Where each block of BLOCK elements begins, then n (remembered: a training loop asks
    for the same sizes again and again; the kernels only read it)."""
    return np.minimum(np.arange(-(-n // BLOCK) + 1) * BLOCK, n)


def _maybe(ct, value):
    return None if value is None else ct(value)


def _storage(dtype):
    """The array the kernel writes for a result of `dtype` (halves as bits)."""
    return np.dtype(_BITS.get(_dtypes.dtype_name(dtype), dtype))


def _empty(dtype) -> np.ndarray:
    """A zero-size array standing for an output that is not wanted (the kernel's type)."""
    empty = _EMPTY.get(dtype)
    if empty is None:
        empty = _EMPTY[dtype] = np.empty(0, _storage(dtype))
    return empty


_EMPTY: dict = {}


def _run(
    call, pl: Plan, *, out=None, gx=None, gy=None, sums=None, wsums=None, divisor=1.0, ct_out=False
):
    def flat(a, dtype):
        return _empty(dtype) if a is None else _bits_out(a)

    args = (
        call.logits,
        pl.x,
        pl.y,
        pl.w,
        pl.p,
        pl.keep,
        None if call.ignore_label is None else pl.ct(call.ignore_label),
        pl.smooth,
        pl.focal,
        pl.ct(divisor),
        flat(out, pl.ct if ct_out else call.dtype),
        flat(gx, pl.ct if ct_out else call.input.dtype),
        flat(gy, pl.ct if ct_out else _target_grad_dtype(call)),
        _empty(np.float64) if sums is None else sums,
        _empty(np.float64) if pl.wd is None else pl.wd,
        _empty(np.float64) if wsums is None else wsums,
        pl.starts,
        _empty(pl.ct),
    )
    blocks = pl.starts.size - 1
    openmp = _openmp()
    team = _team(pl.n, blocks, SERIAL_SIZE if openmp else HELPED_SIZE)
    chunks = 1 if team == 1 else min(CHUNKS_PER_THREAD * team, blocks)
    counters = np.zeros(COUNTERS, np.int64)
    work = (*args, counters, chunks)
    if team == 1:
        _kernel(*work)
    elif openmp:
        _team_kernel(*work, team)
    else:
        _helped(team, work)


def _openmp() -> bool:
    """Whether numba's OpenMP layer runs the team: in the process that imported this module,
    not in one forked from it (once a process has run an OpenMP region, numba terminates a
    child forked from it on the child's first: GNU OpenMP is not fork-safe)."""
    return os.getpid() == _OPENMP_PID


_OPENMP_PID = os.getpid()


def _helped(team: int, work: tuple) -> None:
    """`_kernel` on the calling thread and team - 1 of the helper threads of `_threads`."""
    counters, chunks = work[-2], work[-1]
    box = _threads.submit(team - 1, _share, work)
    try:
        _kernel(*work)
    finally:
        # the chunks the helpers took finish before the call returns or raises (a
        # KeyboardInterrupt in the wait): they write into the caller's arrays (with `out=`,
        # which it may reuse at once); one may have been held up in its last chunk
        while not finished(counters, chunks):
            os.sched_yield()
        box.clear()


def _team(n: int, blocks: int, serial_size: int) -> int:
    """How many threads compute a call of n elements in `blocks` blocks: one up to
    `serial_size`, else numba's thread setting for this Python thread, at most one a block."""
    return 1 if n <= serial_size else max(1, min(numba.get_num_threads(), blocks))


def _bits_out(a: np.ndarray) -> np.ndarray:
    bits = _BITS.get(_dtypes.dtype_name(a.dtype))
    return a.reshape(-1) if bits is None else a.reshape(-1).view(bits)


def _target_grad_dtype(call):
    t = call.target.dtype
    return t if _dtypes.is_floating(np, t) else call.dtype


def _block_array(pl: Plan) -> np.ndarray:
    return np.empty(pl.starts.size - 1)


def _denominator(call, pl: Plan):
    """What the sum is divided by: 1 ('sum'), the number kept ('mean'), or the sum of their
    weights ('weighted_mean'; the number kept without a weight), as `_reduce.denominator`."""
    if call.reduction == "sum":
        return 1
    if pl.wd is None:
        return pl.kept
    wsums = _block_array(pl)
    _run(call, pl, wsums=wsums)
    return _summation.combine(wsums)


def _total(call, sums, denominator) -> np.ndarray:
    return _reduce.finish(_summation.combine(sums), denominator, call.reduction, call.dtype)


def loss(call, pl: Plan):
    """The loss of a call that `plan` accepted."""
    if call.reduction == "none":
        out = np.empty(call.shape, call.dtype)
        _run(call, pl, out=out)
        return out
    sums = _block_array(pl)
    wsums = None if pl.wd is None else _block_array(pl)  # 'weighted_mean', in the same pass
    _run(call, pl, sums=sums, wsums=wsums)
    return _total(call, sums, pl.kept if wsums is None else _summation.combine(wsums))


def elementwise(call, pl: Plan, *, loss=True, grad_input=False, grad_target=False):
    """(loss, d/dx, d/dy) elementwise, in the computation dtype and the loss's shape (None
    where not asked for; 0 where a mask drops the element): what `_evaluate.formula`
    returns, computed by the kernel."""

    def array(wanted):
        return np.empty(call.shape, pl.ct) if wanted else None

    parts = array(loss), array(grad_input), array(grad_target)
    _run(call, pl, out=parts[0], gx=parts[1], gy=parts[2], ct_out=True)
    return parts


def loss_and_grad(call, pl: Plan, wrt: tuple[int, ...], out=None, seed=1.0):
    """The reduced loss and its gradients for the positions in `wrt` (0 input, 1 target),
    times `seed` (the gradient of the output, in a backward pass); the input's gradient goes
    into `out` when given (C-contiguous, checked by the caller)."""
    gx = gy = None
    if 0 in wrt:
        gx = np.empty(call.shape, call.input.dtype) if out is None else out
    if 1 in wrt:
        gy = np.empty(call.shape, _target_grad_dtype(call))
    # d/dx of a mean is the elementwise gradient over the denominator in the computation
    # dtype (as _reduce.gradient divides; nothing kept divides by 1). A
    # 'weighted_mean' needs its weights' sum first: a pass reading the weight alone. A
    # backward pass's seed joins the divisor.
    denominator = _denominator(call, pl)
    if call.reduction == "mean":
        divisor = float(pl.ct(max(denominator, 1))) / seed
    else:
        divisor = float(pl.ct(denominator)) / seed
    sums = _block_array(pl)
    _run(call, pl, gx=gx, gy=gy, sums=sums, divisor=divisor)
    grads = {0: gx, 1: gy}
    return _total(call, sums, denominator), tuple(grads[i] for i in wrt)
