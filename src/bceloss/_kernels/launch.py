"""Running a planned call on the native kernels: the loss, the elementwise terms, the loss
and its gradients, each in one pass over memory on every core (`threads.get_num_threads`).

Work is cut into the blocks of `_summation.BLOCK` elements: each block's loss is summed in
float64 in `_summation.block_sums`' order, and the block sums are combined by
`_summation.combine`, so a total does not depend on the number of threads, and equals
`_summation.total` of the elementwise loss to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

from bceloss import _dtypes, _reduce, _summation
from bceloss._kernels._native import run as run_native
from bceloss._kernels.plan import Plan, downscaled, flat
from bceloss._kernels.threads import get_num_threads

CHUNKS_PER_THREAD = 8
# Calls of at most this many elements run on the calling thread alone: waking helper threads
# and waiting for them costs about what they would save there.
SERIAL_SIZE = 4 * _summation.BLOCK
_KINDS = {"logits": 0, "probabilities": 1, "focal": 2}
_LARGEST = {np.float32: float(np.finfo(np.float32).max), np.float64: math.inf}


def _run(call, pl: Plan, *, out=None, gx=None, gy=None, sums=None, wsums=None, divisor=1.0) -> None:
    blocks = pl.starts.size - 1
    team = 1 if pl.n <= SERIAL_SIZE else max(1, min(get_num_threads(), blocks))
    chunks = 1 if team == 1 else min(CHUNKS_PER_THREAD * team, blocks)
    kind = "focal" if pl.focal is not None else ("logits" if call.logits else "probabilities")
    keep_s, add_s = (1.0, 0.0) if pl.smooth is None else (float(v) for v in pl.smooth)
    alpha, gamma = (None, 0.0) if pl.focal is None else pl.focal
    ignore = math.nan if call.ignore_label is None else float(pl.ct(call.ignore_label))
    run_native(
        _KINDS[kind],
        pl.ct is np.float64,
        pl.x,
        pl.y,
        pl.w,
        pl.p,
        pl.keep,
        pl.wd,
        None if out is None else flat(out),
        None if gx is None else flat(gx),
        None if gy is None else flat(gy),
        sums,
        wsums,
        pl.starts,
        ignore,
        keep_s,
        add_s,
        alpha is not None,
        0.0 if alpha is None else float(alpha),
        float(gamma),
        _in_range(divisor, pl.ct),
        team,
        chunks,
    )


def _in_range(v: float, ct) -> float:
    """v rounded to the compute dtype, +-inf beyond its range (NaN stays)."""
    if abs(v) < _LARGEST[ct] or math.isnan(v):
        return float(ct(v))
    return math.copysign(math.inf, v)


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


def _rescued(call, pl: Plan, run):
    """What `run(pl)` returns first (it returns (result, finite)), or where that is not
    finite, `run` on the plan with weights scaled down (`plan.downscaled`): a 'weighted_mean'
    of weights near the dtype's largest number whose products w l, or their sum, overflowed.
    Ordinary calls pay one `isfinite`."""
    result, finite = run(pl)
    if finite or pl.wd is None:
        return result
    smaller = downscaled(call, pl)
    return result if smaller is None else run(smaller)[0]


def loss(call, pl: Plan):
    """The loss of a call that `plan` accepted."""
    if call.reduction == "none":
        out = np.empty(call.shape, call.dtype)
        _run(call, pl, out=out)
        return out

    def run(pl):
        sums = _block_array(pl)
        wsums = None if pl.wd is None else _block_array(pl)  # 'weighted_mean', in the same pass
        _run(call, pl, sums=sums, wsums=wsums)
        total = _total(call, sums, pl.kept if wsums is None else _summation.combine(wsums))
        return total, math.isfinite(total)

    return _rescued(call, pl, run)


def elementwise(call, pl: Plan, *, loss=True, grad_input=False, grad_target=False):
    """(loss, d/dx, d/dy) elementwise, in the computation dtype and the loss's shape (None
    where not asked for; 0 where a mask drops the element): what `_evaluate.formula`
    returns, computed by the kernel."""

    def array(wanted):
        return np.empty(call.shape, pl.ct) if wanted else None

    parts = array(loss), array(grad_input), array(grad_target)
    _run(call, pl, out=parts[0], gx=parts[1], gy=parts[2])
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

    def run(pl):
        # d/dx of a mean is the elementwise gradient over the denominator in the computation
        # dtype (as _reduce.gradient divides; nothing kept divides by 1). A 'weighted_mean'
        # needs its weights' sum first: a pass reading the weight alone. A backward pass's
        # seed joins the divisor.
        denominator = _denominator(call, pl)
        # (a weights' sum beyond the dtype is inf here: rescued below)
        divisor = _in_range(max(denominator, 1) if call.reduction == "mean" else denominator, pl.ct)
        sums = _block_array(pl)
        _run(call, pl, gx=gx, gy=gy, sums=sums, divisor=divisor / seed)
        total = _total(call, sums, denominator)
        return total, math.isfinite(divisor) and math.isfinite(total)

    total = _rescued(call, pl, run)
    grads = {0: gx, 1: gy}
    return total, tuple(grads[i] for i in wrt)
