"""Runs a validated call: dtypes in, the formula, the reduction, the result's dtype out."""

from __future__ import annotations

import contextlib
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
    where: Any = None  # a bool array broadcastable to the input: the elements kept
    label_smoothing: float = 0.0  # the target becomes y (1 - s) + s / 2
    gamma: float | None = None  # not None: the sigmoid focal loss, with this exponent
    alpha: float | None = None  # the focal loss's weight of the positives (None: off)

    def replace(self, **changes) -> LossCall:
        """A copy with `changes`: `dataclasses.replace` without running `__init__` again
        (a quarter of its time; a PyTorch training step makes several)."""
        assert changes.keys() <= self.__dict__.keys(), changes.keys() - self.__dict__.keys()
        copy = object.__new__(LossCall)
        copy.__dict__.update(self.__dict__, **changes)
        return copy


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


def _elementwise(call: LossCall, *, loss=True, grad_input=False, grad_target=False):
    xp = call.xp
    if array_api_compat.is_dask_namespace(xp):
        return _by_block(call, loss=loss, grad_input=grad_input, grad_target=grad_target)
    x, y, w, p, drop = _prepared(call)
    wanted = {"loss": loss, "grad_input": grad_input, "grad_target": grad_target}
    if call.gamma is not None:
        parts = _formulas.focal(xp, x, y, w, call.alpha, call.gamma, **wanted)
    elif call.logits:
        parts = _formulas.logits(xp, x, y, w, p, smoothing=call.label_smoothing, **wanted)
    else:
        parts = _formulas.probabilities(xp, x, y, w, smoothing=call.label_smoothing, **wanted)
    return _zeroed(xp, drop, parts)


def pos_weight_gradient(call: LossCall):
    """The elementwise d l / d pos_weight (logits form), zeroed where the loss is."""
    with _quiet(call.xp):
        x, y, w, _, drop = _prepared(call)
        y, _ = _formulas.smoothed(call.xp, y, call.label_smoothing)
        return _zeroed(call.xp, drop, (_formulas.logits_grad_pos_weight(call.xp, x, y, w),))[0]


def _by_block(call: LossCall, **wanted):
    """Dask: `_elementwise` of each block (NumPy or CuPy), one task per block, lazily."""
    import dask.array as da

    names = ("input", "target", "weight", "pos_weight", "where")
    names = [n for n in names if getattr(call, n) is not None]
    arrays = da.broadcast_arrays(*(getattr(call, n) for n in names))
    count = sum(map(bool, wanted.values()))

    def block(*blocks):
        inner = call.replace(
            xp=array_api_compat.array_namespace(*blocks),
            **dict(zip(names, blocks, strict=True)),
        )
        with _quiet(inner.xp):
            return inner.xp.stack([v for v in _block_elementwise(inner, **wanted) if v is not None])

    stacked = da.map_blocks(
        block,
        *arrays,
        new_axis=0,
        chunks=((count,), *arrays[0].chunks),
        dtype=_dtypes.compute_dtype(call.xp, call.dtype),
    )
    rows = iter(range(count))  # the wanted parts, in order, are the rows of `stacked`
    return tuple(stacked[next(rows)] if want else None for want in wanted.values())


def _block_elementwise(call: LossCall, **wanted):
    """`_elementwise` of one block; on NumPy the fused kernel's (at every size), so that Dask
    gets the numbers NumPy gets for the whole array."""
    block = call.replace(shape=tuple(call.input.shape))
    plan = _kernel_plan(block, min_size=1)
    if plan is None:
        return _elementwise(call, **wanted)
    from bceloss import _kernels

    return _kernels.elementwise(block, plan, **wanted)


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
    return _as_array(xp, _round(xp, reduced(call, l), call.dtype))


def reduced(call: LossCall, l):
    """The reduced elementwise loss `l` in the accumulation dtype, before any rounding."""
    xp = call.xp
    acc = _accumulator(xp, l)
    if array_api_compat.is_numpy_namespace(xp):
        # only the kept elements, in order: the same blocks, so the same sum, as l[where]
        kept = l if call.where is None else l[xp.broadcast_to(call.where, call.shape)]
        total = xp.asarray(_summation.total(kept), dtype=acc)
    else:
        total = xp.sum(l, dtype=acc)
    if call.reduction == "sum":
        return total
    n = _denominator(call, acc)
    if isinstance(n, int) and n == 0:
        return xp.full((), math.nan, dtype=acc, device=array_api_compat.device(l))
    return total / n  # 'weighted_mean' with weights adding up to 0: 0 / 0 = NaN


def _denominator(call: LossCall, acc):
    """What 'mean' divides the sum by, the number of elements kept, or 'weighted_mean', the
    sum of their weights broadcast to the loss's shape (the number kept when weight is None).

    A Python number on NumPy and where nothing is masked; else a 0-d array (lazy on Dask).
    """
    xp = call.xp
    weighted = call.reduction == "weighted_mean" and call.weight is not None
    if call.where is None and not weighted:
        return math.prod(call.shape)
    keep = None if call.where is None else xp.broadcast_to(call.where, call.shape)
    on_numpy = array_api_compat.is_numpy_namespace(xp)
    if not weighted:
        return int(xp.count_nonzero(keep)) if on_numpy else xp.sum(xp.astype(keep, acc))
    w = xp.broadcast_to(xp.astype(call.weight, acc), call.shape)
    if on_numpy:
        return _summation.total(w if keep is None else w[keep])
    return xp.sum(w if keep is None else xp.where(keep, w, xp.zeros_like(w)))


def _reduce_gradient(call: LossCall, g, like, dtype):
    """The gradient of the reduced loss, summed back to the shape of `like`, in `dtype`."""
    xp = call.xp
    if call.reduction == "weighted_mean":
        g = g / _denominator(call, _accumulator(xp, g))
    elif call.reduction == "mean":
        n = _denominator(call, _accumulator(xp, g))
        # nothing kept: every gradient is 0
        g = g / (max(n, 1) if isinstance(n, int) else xp.where(n > 0, n, xp.ones_like(n)))
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
    if array_api_compat.is_torch_namespace(call.xp):
        return _autograd.torch_forward(call)
    return evaluate(call)


def numpy_twin(call: LossCall):
    """The call on NumPy views of its PyTorch CPU tensors (zero-copy), or None: another
    device, a result dtype other than float32 and float64, or a bfloat16 argument (NumPy has
    no view of it)."""
    if call.input.device.type != "cpu" or _dtypes.dtype_name(call.dtype) not in (
        "float32",
        "float64",
    ):
        return None
    arrays = {}
    for name in _autograd._TENSORS:
        a = getattr(call, name)
        if a is not None and _dtypes.dtype_name(a.dtype) == "bfloat16":
            return None
        arrays[name] = None if a is None else a.detach().numpy()
    import array_api_compat.numpy as xp
    import numpy as np

    return call.replace(xp=xp, dtype=np.dtype(_dtypes.dtype_name(call.dtype)), **arrays)


KERNEL_MIN_SIZE = 4096  # elements; see README, ## Speed


def _kernel_plan(call: LossCall, min_size: int = KERNEL_MIN_SIZE):
    """The fused NumPy kernel's plan for `call` (see _kernels.plan), or None. Below
    KERNEL_MIN_SIZE elements (kept, under a mask) the formula runs and numba is not
    imported: both take tens of microseconds there, and a program computing only small
    losses is spared numba's import and first compilation."""
    if not array_api_compat.is_numpy_namespace(call.xp) or math.prod(call.shape) < min_size:
        return None
    from bceloss import _kernels

    return _kernels.plan(call, min_size)


def evaluate(call: LossCall, *, fast: bool = True):
    """The loss of a validated call, computed directly (`fast`: by the fused NumPy kernel
    where it applies)."""
    plan = _kernel_plan(call) if fast else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.loss(call, plan)
    with _quiet(call.xp):
        l, _, _ = _elementwise(call)
        return _reduce(call, l)


def elementwise(call: LossCall, *, whole_size: int, **wanted):
    """(loss, d/dx, d/dy) elementwise for a validated NumPy call, in the computation dtype
    before any rounding to the result's dtype (None where not `wanted`: `loss`, `grad_input`,
    `grad_target`, as `_elementwise`): the loss is what `_reduce` adds up. Streams add it up
    block by block; a recorded PyTorch forward with reduction='none' keeps the gradients.

    `call` is a piece of an array of `whole_size` elements: the piece takes the path (fused
    kernel or formula) the whole array would take, so a stream adds up to the last bit what
    the library returns for the whole array."""
    plan = _kernel_plan(call, min_size=1) if whole_size >= KERNEL_MIN_SIZE else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.elementwise(call, plan, **wanted)
    with _quiet(call.xp):
        return _elementwise(call, **wanted)


def loss_and_grad(
    call: LossCall, wrt: tuple[int, ...], *, out=None, fast: bool = True, seed: float = 1.0
):
    """The loss and its gradients with respect to the positions in `wrt` (0 input, 1 target),
    the gradients times `seed` (a backward pass's gradient of the output).

    The fused NumPy kernel (`fast`) writes the input's gradient into `out` when given (a
    checked, C-contiguous array); otherwise the caller copies it there. A PyTorch CPU call
    with nothing recording runs on NumPy views of its tensors (`fast`)."""
    if fast and array_api_compat.is_torch_namespace(call.xp) and not _autograd.records(call):
        done = _autograd.torch_loss_and_grad(call, wrt, out=out, seed=seed)
        if done is not None:
            return done
    plan = _kernel_plan(call) if fast else None
    if plan is not None:
        from bceloss import _kernels

        return _kernels.loss_and_grad(call, plan, wrt, out=out, seed=seed)
    xp = call.xp
    with _quiet(xp):
        l, gx, gy = _elementwise(call, grad_input=0 in wrt, grad_target=1 in wrt)
        value = _reduce(call, l)
        grads = []
        for i in wrt:
            g = gx if i == 0 else gy
            g = g if seed == 1 else g * seed
            if i == 0:
                grads.append(_reduce_gradient(call, g, call.input, call.input.dtype))
            else:
                t = call.target
                dtype = t.dtype if _dtypes.is_floating(xp, t.dtype) else call.dtype
                grads.append(_reduce_gradient(call, g, t, dtype))
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
