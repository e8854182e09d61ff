"""Computes a validated call: the formula or the fused kernel, then the reduction.

The array-API formulas (`_formulas`) are the reference and run on every library; the fused
NumPy kernel (`_kernels`) replaces them where `_dispatch.kernel_plan` says so. What differs
between libraries is asked of the call's adapter (`call.backend`): its floating-point warnings
(`quiet`), how it evaluates elementwise (Dask: block by block), how it sums (`_reduce`).
"""

from __future__ import annotations

import array_api_compat

from bceloss import _dispatch, _dtypes, _formulas, _reduce
from bceloss._call import LossCall


def _prepared(call: LossCall):
    """input, target, weight, pos_weight in the computation dtype, and where the elementwise
    results are to be zeroed (an ignored label, an element masked out by `where`) or None.

    Masked-out elements are first replaced by harmless values (x = y = 1/2, weights 1):
    the first `where` of the "double where". NaN or inf there would otherwise reach autograd,
    which multiplies it by the zero gradient of the second `where` (`_zeroed`): NaN.
    """
    xp = call.xp
    ct = _dtypes.compute_dtype(xp, call.dtype)

    def cast(a):
        return None if a is None else xp.astype(a, ct, copy=False)

    x, y, w, p = (cast(a) for a in (call.input, call.target, call.weight, call.pos_weight))
    drop = None if call.ignore_label is None else y == call.ignore_label
    if call.where is not None:
        keep = xp.broadcast_to(call.where, tuple(x.shape))  # a block's, on Dask
        drop = xp.logical_not(keep) if drop is None else xp.logical_or(drop, xp.logical_not(keep))
        one = xp.ones((), dtype=ct, device=array_api_compat.device(x))
        x, y = xp.where(keep, x, one / 2), xp.where(keep, y, one / 2)
        w, p = (None if a is None else xp.where(keep, a, one) for a in (w, p))
    return x, y, w, p, drop


def _zeroed(xp, drop, parts):
    if drop is None:
        return parts
    return tuple(None if v is None else xp.where(drop, xp.zeros_like(v), v) for v in parts)


def formula(call: LossCall, *, loss=True, grad_input=False, grad_target=False):
    """(loss, d/dx, d/dy) elementwise by the array-API formulas, in the computation dtype
    (None where not wanted; 0 where an element is dropped). Call it quietly (`quiet`)."""
    xp = call.xp
    x, y, w, p, drop = _prepared(call)
    wanted = {"loss": loss, "grad_input": grad_input, "grad_target": grad_target}
    if call.kind == "focal":
        parts = _formulas.focal(xp, x, y, w, call.alpha, call.gamma, **wanted)
    elif call.kind == "logits":
        parts = _formulas.logits(xp, x, y, w, p, smoothing=call.label_smoothing, **wanted)
    else:
        parts = _formulas.probabilities(xp, x, y, w, smoothing=call.label_smoothing, **wanted)
    return _zeroed(xp, drop, parts)


def pos_weight_gradient(call: LossCall):
    """The elementwise d l / d pos_weight (logits form), zeroed where the loss is."""
    with call.backend.quiet():
        x, y, w, _, drop = _prepared(call)
        y, _ = _formulas.smoothed(call.xp, y, call.label_smoothing)
        return _zeroed(call.xp, drop, (_formulas.logits_grad_pos_weight(call.xp, x, y, w),))[0]


def evaluate(call: LossCall, *, fast: bool = True):
    """The loss of a validated call, computed directly (`fast`: by the fused kernel where
    `_dispatch.kernel_plan` allows)."""
    plan = _dispatch.kernel_plan(call) if fast else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.loss(call, plan)
    with call.backend.quiet():
        l, _, _ = call.backend.elementwise(call)
        return _reduce.loss(call, l)


def elementwise(call: LossCall, *, whole_size: int, **wanted):
    """(loss, d/dx, d/dy) elementwise for a validated NumPy call, in the computation dtype
    before any rounding to the result's dtype (None where not `wanted`: `loss`, `grad_input`,
    `grad_target`, as `formula`): the loss is what `_reduce` adds up. Streams add it up
    block by block; a recorded PyTorch forward with reduction='none' keeps the gradients.

    `call` is a piece of an array of `whole_size` elements: the piece takes the path (fused
    kernel or formula) the whole array would take, so a stream adds up to the last bit what
    the library returns for the whole array."""
    whole = whole_size >= _dispatch.KERNEL_MIN_SIZE
    plan = _dispatch.kernel_plan(call, min_size=1) if whole else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.elementwise(call, plan, **wanted)
    with call.backend.quiet():
        return formula(call, **wanted)


def loss_and_grad(
    call: LossCall, wrt: tuple[int, ...], *, out=None, fast: bool = True, seed: float = 1.0
):
    """The loss and its gradients with respect to the positions in `wrt` (0 input, 1 target),
    the gradients times `seed` (a backward pass's gradient of the output).

    `fast`: the adapter's own route first (PyTorch CPU tensors with nothing recording run
    on NumPy views), then the fused kernel, which writes the input's gradient into `out`
    when given (a checked, C-contiguous array); otherwise the caller copies it there."""
    if fast:
        done = call.backend.native_loss_and_grad(call, wrt, out=out, seed=seed)
        if done is not None:
            return done
    plan = _dispatch.kernel_plan(call) if fast else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.loss_and_grad(call, plan, wrt, out=out, seed=seed)
    xp = call.xp
    with call.backend.quiet():
        l, gx, gy = call.backend.elementwise(call, grad_input=0 in wrt, grad_target=1 in wrt)
        value = _reduce.loss(call, l)
        grads = []
        for i in wrt:
            g = gx if i == 0 else gy
            g = g if seed == 1 else g * seed
            if i == 0:
                grads.append(_reduce.gradient(call, g, call.input, call.input.dtype))
            else:
                t = call.target
                dtype = t.dtype if _dtypes.is_floating(xp, t.dtype) else call.dtype
                grads.append(_reduce.gradient(call, g, t, dtype))
        return value, tuple(grads)
