"""Running a planned call on the native kernels: the loss, the elementwise terms, the loss
and its gradients, each in one pass over memory on every core (`threads.get_num_threads`).

Work is cut into the blocks of `_summation.BLOCK` elements: each block's loss is summed in
float64 in `_summation.block_sums`' order, and the block sums are combined by
`_summation.combine`, so a total does not depend on the number of threads, and equals
`_summation.total` of the elementwise loss to the last bit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bceloss import _dtypes, _reduce, _summation
from bceloss._kernels._native import run as run_native
from bceloss._kernels.plan import Plan, downscaled, flat, periodic
from bceloss._kernels.threads import get_num_threads

CHUNKS_PER_THREAD = 8
# Calls of at most this many elements run on the calling thread alone: waking helper threads
# and waiting for them costs about what they would save there.
SERIAL_SIZE = 4 * _summation.BLOCK
_KINDS = {"logits": 0, "probabilities": 1, "focal": 2}
_LARGEST = {np.float32: float(np.finfo(np.float32).max), np.float64: math.inf}


def _run(call, pl: Plan, *, out=None, gx=None, gy=None, sums=None, wsums=None, divisor=1.0) -> None:
    options, constants = _constants(call, pl)
    run_native(
        *options,
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
        *constants,
        _in_range(divisor, pl.ct),
        *_team(pl),
    )


def _constants(call, pl: Plan) -> tuple[tuple, tuple]:
    """The kernel's arguments other than arrays, divisor and threads: those before the
    arrays (which loss, which compute dtype) and those after (blocks, ignored label,
    smoothing, focal options)."""
    kind = "focal" if pl.focal is not None else ("logits" if call.logits else "probabilities")
    keep_s, add_s = (1.0, 0.0) if pl.smooth is None else (float(v) for v in pl.smooth)
    alpha, gamma = (None, 0.0) if pl.focal is None else pl.focal
    ignore = math.nan if call.ignore_label is None else float(pl.ct(call.ignore_label))
    options = (_KINDS[kind], pl.ct is np.float64)
    focal = (alpha is not None, 0.0 if alpha is None else float(alpha), float(gamma))
    return options, (pl.starts, ignore, keep_s, add_s, *focal)


def _team(pl: Plan) -> tuple[int, int]:
    """(threads, chunks) of a call: the calling thread alone up to SERIAL_SIZE elements."""
    if pl.n <= SERIAL_SIZE:
        return 1, 1
    blocks = pl.starts.size - 1
    team = max(1, min(get_num_threads(), blocks))
    return team, (1 if team == 1 else min(CHUNKS_PER_THREAD * team, blocks))


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
        divisor = _in_range(max(denominator, 1) if _reduce.counts(call) else denominator, pl.ct)
        sums = _block_array(pl)
        _run(call, pl, gx=gx, gy=gy, sums=sums, divisor=divisor / seed)
        total = _total(call, sums, denominator)
        return total, math.isfinite(divisor) and math.isfinite(total)

    total = _rescued(call, pl, run)
    grads = {0: gx, 1: gy}
    return total, tuple(grads[i] for i in wrt)


class Prepared:
    """A planned call's constants, kept for the calls of its form (`_memo`: same options,
    shapes and dtypes): such a call costs its arrays' flat views and the kernel, without a
    plan or a LossCall, and gets `loss` and `loss_and_grad`'s bits. Made by `prepare`."""

    __slots__ = ("constants", "denominator", "divisor", "dtype", "options", "plan", "reduction")

    def __init__(self, call, pl: Plan):
        self.options, self.constants = _constants(call, pl)
        # the plan without arrays: its blocks, kept count, compute dtype (for _team, periodic)
        self.plan = dataclasses.replace(pl, x=None, y=None, w=None, p=None, wd=None)
        self.reduction, self.dtype = call.reduction, call.dtype
        # as `loss_and_grad` divides (`_denominator`: no weights' sum without a weight)
        self.denominator = 1 if call.reduction == "sum" else pl.kept
        divisor = max(pl.kept, 1) if _reduce.counts(call) else self.denominator
        self.divisor = _in_range(divisor, pl.ct)

    def _run(self, x, y, w, p, *, out=None, gx=None, sums=None, divisor=1.0):
        pl = self.plan
        if w is not None:
            w = periodic(w, x.shape, pl.n, pl.ct)
        if p is not None:
            p = periodic(p, x.shape, pl.n, pl.ct)
        run_native(
            *self.options,
            flat(x),
            flat(y),
            w,
            p,
            None,
            None,
            None if out is None else flat(out),
            None if gx is None else flat(gx),
            None,
            sums,
            None,
            *self.constants,
            divisor,
            *_team(pl),
        )

    def loss(self, x, y, w=None, p=None) -> np.ndarray:
        """The loss of arrays x, y, weight w and pos_weight p (None where the form has none)."""
        if self.reduction == "none":
            out = np.empty(x.shape, self.dtype)
            self._run(x, y, w, p, out=out)
            return out
        sums = np.empty(self.plan.starts.size - 1)
        self._run(x, y, w, p, sums=sums)
        return _reduce.finish(_summation.combine(sums), self.plan.kept, self.reduction, self.dtype)

    def loss_and_grad(self, x, y, w, p, out) -> np.ndarray:
        """The reduced loss, the input's gradient written into `out` (C-contiguous, the
        input's shape and dtype), as `loss_and_grad(call, plan, (0,), out)`."""
        sums = np.empty(self.plan.starts.size - 1)
        self._run(x, y, w, p, gx=out, sums=sums, divisor=self.divisor)
        total = _summation.combine(sums)
        return _reduce.finish(total, self.denominator, self.reduction, self.dtype)


def prepare(call, pl: Plan) -> Prepared | None:
    """`Prepared` for the calls of `call`'s form, or None where a plan depends on more than
    the form: a mask (its blocks follow its values) or a 'weighted_mean' of a weight (its
    weights' sum, and the rescue of an overflowing one)."""
    if call.where is not None or (call.reduction == "weighted_mean" and call.weight is not None):
        return None
    return Prepared(call, pl)
