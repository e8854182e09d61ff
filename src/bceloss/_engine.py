"""Runs a validated call: dtypes in, the formula, the reduction, the result's dtype out."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from bceloss import _autograd, _dtypes, _formulas, _summation


@dataclass(frozen=True)
class LossCall:
    """One validated call of a loss function: its arrays, its options, its result's form."""

    xp: Any
    logits: bool
    input: Any
    target: Any
    weight: Any
    pos_weight: Any
    reduction: str
    dtype: Any  # the result's dtype
    shape: tuple[int, ...]  # the elementwise loss's shape (a Paddle weight may widen it)
    ignore_label: float | None = None


def _quiet(xp):
    """NumPy warns on exp overflow and log(0); the formulas expect and handle both.

    array-api-strict computes with NumPy in this thread too. Dask computes later, in its
    workers: `_by_block` runs the formulas there, block by block, each block quietly.
    """
    on_numpy = array_api_compat.is_numpy_namespace(xp)
    if on_numpy or array_api_compat.is_array_api_strict_namespace(xp):
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def _accumulator(xp, like):
    """The dtype sums run in: float64 where the namespace and device have it."""
    if array_api_compat.is_jax_namespace(xp):
        import jax

        if not jax.config.jax_enable_x64:
            return xp.float32
    if array_api_compat.is_torch_namespace(xp) and like.device.type == "mps":
        return xp.float32
    return xp.float64


def _elementwise(call: LossCall, *, loss=True, grad_input=False, grad_target=False):
    xp = call.xp
    if array_api_compat.is_dask_namespace(xp):
        return _by_block(call, loss=loss, grad_input=grad_input, grad_target=grad_target)
    ct = _dtypes.compute_dtype(xp, call.dtype)

    def cast(a):
        return None if a is None else xp.astype(a, ct, copy=False)

    x, y, w = cast(call.input), cast(call.target), cast(call.weight)
    wanted = {"loss": loss, "grad_input": grad_input, "grad_target": grad_target}
    if call.logits:
        parts = _formulas.logits(xp, x, y, w, cast(call.pos_weight), **wanted)
    else:
        parts = _formulas.probabilities(xp, x, y, w, **wanted)
    if call.ignore_label is None:
        return parts
    ignored = y == call.ignore_label
    zero = xp.zeros((), dtype=ct, device=array_api_compat.device(x))
    return tuple(None if v is None else xp.where(ignored, zero, v) for v in parts)


def _by_block(call: LossCall, **wanted):
    """Dask: `_elementwise` of each block (NumPy or CuPy), one task per block, lazily."""
    import dask.array as da

    names = [n for n in ("input", "target", "weight", "pos_weight") if getattr(call, n) is not None]
    arrays = da.broadcast_arrays(*(getattr(call, n) for n in names))
    count = sum(map(bool, wanted.values()))

    def block(*blocks):
        inner = dataclasses.replace(
            call,
            xp=array_api_compat.array_namespace(*blocks),
            **dict(zip(names, blocks, strict=True)),
        )
        with _quiet(inner.xp):
            return inner.xp.stack([v for v in _elementwise(inner, **wanted) if v is not None])

    stacked = da.map_blocks(
        block,
        *arrays,
        new_axis=0,
        chunks=((count,), *arrays[0].chunks),
        dtype=_dtypes.compute_dtype(call.xp, call.dtype),
    )
    rows = iter(range(count))  # the wanted parts, in order, are the rows of `stacked`
    return tuple(stacked[next(rows)] if want else None for want in wanted.values())


def _round(xp, a, dtype):
    """`a` in the result's `dtype`; on Dask each block quietly (float16 overflows to inf)."""
    if array_api_compat.is_dask_namespace(xp):
        return a.map_blocks(functools.partial(_round_block, dtype=dtype), dtype=dtype)
    return xp.astype(a, dtype, copy=False)


def _round_block(block, dtype):
    xp = array_api_compat.array_namespace(block)
    with _quiet(xp):
        return xp.astype(block, dtype, copy=False)


def _as_array(xp, value):
    # NumPy returns scalars from 0-d operations; the contract is a 0-d array.
    return xp.asarray(value) if array_api_compat.is_numpy_namespace(xp) else value


def _reduce(call: LossCall, l):
    xp = call.xp
    if call.reduction == "none":
        return _as_array(xp, _round(xp, l, call.dtype))
    acc = _accumulator(xp, l)
    if array_api_compat.is_numpy_namespace(xp):
        total = xp.asarray(_summation.total(l), dtype=acc)
    else:
        total = xp.sum(l, dtype=acc)
    if call.reduction == "mean":
        n = math.prod(call.shape)
        total = (
            total / n if n else xp.full((), math.nan, dtype=acc, device=array_api_compat.device(l))
        )
    return _as_array(xp, _round(xp, total, call.dtype))


def _reduce_gradient(call: LossCall, g, like, dtype):
    """The gradient of the reduced loss, summed back to the shape of `like`, in `dtype`."""
    xp = call.xp
    if call.reduction == "mean":
        g = g / max(math.prod(call.shape), 1)
    extra = len(call.shape) - like.ndim
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    squeezed = tuple(i for i, (n, m) in enumerate(zip(g.shape, like.shape, strict=True)) if n != m)
    if squeezed:
        g = xp.sum(g, axis=squeezed, keepdims=True)
    return _as_array(xp, _round(xp, g, dtype))


def loss(call: LossCall):
    """The loss of a validated call, differentiable where PyTorch or JAX is recording."""
    if _autograd.records(call):
        return _autograd.loss(call)
    return evaluate(call)


def evaluate(call: LossCall):
    """The loss of a validated call, computed directly."""
    with _quiet(call.xp):
        l, _, _ = _elementwise(call)
        return _reduce(call, l)


def elementwise_loss(call: LossCall):
    """The elementwise loss of a validated call in the computation dtype, before any rounding
    to the result's dtype: what `_reduce` adds up. Streams add it up block by block."""
    with _quiet(call.xp):
        return _elementwise(call)[0]


def loss_and_grad(call: LossCall, wrt: tuple[int, ...]):
    """The loss and its gradients with respect to the positions in `wrt` (0 input, 1 target)."""
    xp = call.xp
    with _quiet(xp):
        l, gx, gy = _elementwise(call, grad_input=0 in wrt, grad_target=1 in wrt)
        value = _reduce(call, l)
        grads = []
        for i in wrt:
            if i == 0:
                grads.append(_reduce_gradient(call, gx, call.input, call.input.dtype))
            else:
                t = call.target
                dtype = t.dtype if _dtypes.is_floating(xp, t.dtype) else call.dtype
                grads.append(_reduce_gradient(call, gy, t, dtype))
        return value, tuple(grads)


def loss_function(bind):
    """Turn `bind`, which checks a call's arguments into a LossCall, into a loss function.

    The loss keeps bind's name, signature and docstring; `value_and_grad` finds bind again
    through the `__bceloss_bind__` attribute.
    """

    @functools.wraps(bind)
    def run(*args, **kwargs):
        return loss(bind(*args, **kwargs))

    run.__bceloss_bind__ = bind
    return run
