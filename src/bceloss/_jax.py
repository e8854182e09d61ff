"""The JAX adapter: the loss as a `jax.custom_jvp` whose derivative is the closed form.

Under a transform (jax.grad, jax.jit, vmap: an argument is a tracer) the loss is one
custom_jvp operation, its jvp `_gradients.tangent` in jax.numpy ops, so any order works.
Values inside a trace cannot be read: the [0, 1] check of probabilities is skipped there.
"""

from __future__ import annotations

import jax
from jax.custom_derivatives import SymbolicZero

from bceloss import _array_api, _evaluate, _gradients

_ARRAYS = ("input", "target", "weight", "pos_weight")


def _bind(call, arrays):
    return call.replace(**dict(zip(_ARRAYS, arrays, strict=True)))


class Jax(_array_api.ArrayAPI):
    """JAX arrays: float32 sums without x64, custom_jvp under transforms."""

    def accumulator(self, xp, like):
        return xp.float64 if jax.config.jax_enable_x64 else xp.float32

    def loss(self, call):
        arrays = tuple(getattr(call, name) for name in _ARRAYS)
        if any(isinstance(a, jax.core.Tracer) for a in arrays):
            return _differentiable(call, arrays)
        return _evaluate.evaluate(call)

    def checked_probabilities(self, xp, x, name):
        if isinstance(x, jax.core.Tracer):  # inside a trace: no values to read
            return x
        return super().checked_probabilities(xp, x, name)


def _differentiable(call, arrays):
    static = _bind(call, (None,) * len(_ARRAYS))

    @jax.custom_jvp
    def bce(*arrays):
        return _evaluate.evaluate(_bind(static, arrays))

    def jvp(primals, tangents):
        value = bce(*primals)
        dots = tuple(None if isinstance(t, SymbolicZero) else t for t in tangents)
        dot = _gradients.tangent(_bind(static, primals), dots)
        return value, static.xp.zeros_like(value) if dot is None else dot

    bce.defjvp(jvp, symbolic_zeros=True)
    return bce(*arrays)
