"""The closed-form gradients of a call with respect to each of its arrays, and its tangent.

Autograd traced through the loss formula would differentiate its `where`s and 0 * inf
limits (NaN at infinite logits) and the float32 detour of the half types. The adapters
(`_torch`, `_jax`) instead register each loss as one operation whose derivative is computed
here, by the same array-API formulas; those are ordinary framework ops, so autograd
differentiates them in turn: second order works.
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from bceloss import _evaluate, _reduce


def scaled(g, seed, dtype):
    """A NumPy gradient `g` computed for an output gradient of 1, times the output's gradient
    `seed` (a float, or an array of the loss's shape), rounded once to `dtype`; `g` itself
    where that changes nothing. What an adapter's backward makes of its forward's gradient."""
    if isinstance(seed, float) and seed == 1.0 and g.dtype == dtype:
        return g
    return np.asarray(g * seed).astype(dtype, copy=False)


def elementwise(call, needs):
    """The elementwise d l / d (input, target, weight, pos_weight), None where not in `needs`.

    In the computation dtype, broadcast to the loss's shape; ignored labels give 0.
    """
    xp, backend = call.xp, call.backend
    gx = gy = gw = gp = None
    if needs[0] or needs[1]:
        _, gx, gy = backend.elementwise(call, loss=False, grad_input=needs[0], grad_target=needs[1])
    if needs[2]:
        # l = w f(x, y, p): d l / d w is the loss without the weight
        gw, _, _ = backend.elementwise(call.replace(weight=None))
        if call.reduction == "weighted_mean":
            # d/dw_i (sum w l / sum w) = (l_i - mean) / sum w; `_reduce` divides by sum w
            mean = _reduce.reduced(call, backend.elementwise(call)[0])
            gw = gw - xp.astype(mean, gw.dtype)
            if call.where is not None:
                gw = xp.where(xp.broadcast_to(call.where, call.shape), gw, xp.zeros_like(gw))
    if needs[3]:
        gp = _evaluate.pos_weight_gradient(call)
    return tuple(None if g is None else xp.broadcast_to(g, call.shape) for g in (gx, gy, gw, gp))


def reduced(call, seed, needs, likes):
    """`seed` (the gradient of the output) times the gradients of the reduced loss with
    respect to the arrays `likes` (None where not in `needs`), each of its array's shape and
    dtype."""
    with call.backend.quiet():
        parts = elementwise(call, needs)
        return tuple(
            None if g is None else _reduce.gradient(call, seed * g, like, like.dtype)
            for g, like in zip(parts, likes, strict=True)
        )


def tangent(call, tangents):
    """The forward-mode derivative: sum_i g_i * t_i, reduced like the loss (None: no tangent).

    Args:
      call: the LossCall at the primal point.
      tangents: four arrays or None, the tangents of input, target, weight and pos_weight.

    Returns:
      The loss's tangent (its shape and dtype), or None when every tangent is None.
    """
    with call.backend.quiet():
        parts = elementwise(call, tuple(t is not None for t in tangents))
        terms = [g * t for g, t in zip(parts, tangents, strict=True) if g is not None]
        return _reduce.loss(call, functools.reduce(operator.add, terms)) if terms else None
