"""The Paddle adapter: paddle.Tensor in and out, the loss inside Paddle's autograd.

Paddle's tensors are not array API arrays, so the adapter takes the call at the edge
(`_dispatch.edge_adapter`), before validation: each paddle.Tensor argument becomes a NumPy
view of its memory (`np.from_dlpack(t.detach())`, zero-copy; DLPack refuses a tensor that
requires grad, hence the detach), the loss's own `bind` validates the call on those views
(the same checks and messages as on NumPy), and the core computes it on NumPy: the fused
kernel from its threshold up, NumPy's formula below. The result comes back as a
paddle.Tensor sharing the NumPy result's memory (`paddle.utils.dlpack.from_dlpack`).

When Paddle records (grad enabled and an argument's `stop_gradient` is False), the loss is
one `paddle.autograd.PyLayer` whose backward gives the closed-form gradients of `_gradients`
and `_evaluate`. Where it is cheap the forward computes the gradient in the loss's own pass
(input and target of a 'mean' or 'sum' loss: `_evaluate.loss_and_grad`; of a 'none' loss:
`_evaluate.elementwise`) and the backward only multiplies it by the output's gradient; the
weight's and pos_weight's gradients are computed in the backward (`_gradients.reduced`).

One rule for mixed kinds: NumPy arrays beside paddle tensors are constants (no gradient);
any other array library beside Paddle is a TypeError. CPU tensors only: a tensor on another
device is a ValueError (no silent copy). `paddle.jit.to_static` runs the loss between its
graph segments (its default, `full_graph=False`); a `full_graph=True` program has no values
to read and is refused with a RuntimeError.
"""

from __future__ import annotations

import functools
import inspect
import sys

import array_api_compat
import numpy as np
import paddle

from bceloss import (
    _call,
    _dispatch,
    _dtypes,
    _evaluate,
    _gradients,
    _memo,
    _module_types,
    _reduce,
)

_ARRAYS = _call.ARRAYS[:4]  # those with a gradient


class Paddle:
    """The edge adapter of Paddle: `loss` runs a loss function on paddle tensors."""

    # a function, not a method: the static-graph translator leaves a function of an ignored
    # module as it is, and a bound method not
    @staticmethod
    def loss(bind, args, kwargs):
        """The loss `bind` validates, on the paddle tensors among `args` and `kwargs`.

        Args:
          bind: the loss function's bind (its checks; returns a NumPy LossCall).
          args, kwargs: the loss function's arguments, some of them paddle tensors.

        Returns:
          A paddle.Tensor (0-d for 'mean' and 'sum'), recorded by Paddle's autograd when an
          argument needs a gradient.
        """
        if not paddle.in_dynamic_mode():
            _refuse_static()
        names = _parameters(bind)
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        tensors = {}  # id of a NumPy view -> the paddle tensor it shows
        views = {}
        for name, value in bound.items():
            if isinstance(value, paddle.Tensor):
                views[name] = view = _numpy(value, name)
                tensors[id(view)] = value
            elif _foreign(value):
                # the first paddle tensor's name, for the message
                first = next(n for n, v in bound.items() if _is_paddle(v))
                kind = type(value).__module__.partition(".")[0]
                note = "; NumPy arrays beside paddle tensors are constants"
                raise TypeError(_dispatch.mixed_kinds(first, "paddle", name, kind, note=note))
        positional = [views.get(n, a) for n, a in zip(names, args, strict=False)]
        keywords = {k: views.get(k, v) for k, v in kwargs.items()}
        call = _memo.validated(bind, positional, keywords)

        record = paddle.is_grad_enabled()
        sources = [tensors.get(id(getattr(call, name))) for name in _ARRAYS]
        needs = tuple(record and t is not None and not t.stop_gradient for t in sources)
        if record:
            used = {id(t) for t in sources if t is not None}
            for name, view in views.items():
                t = tensors[id(view)]
                if not t.stop_gradient and id(t) not in used:
                    msg = (
                        f"{name} requires a gradient, which bceloss does not compute (only "
                        f"those of its input, target, weight and pos_weight); pass "
                        f"{name}.detach()"
                    )
                    raise ValueError(msg)
        if not any(needs):
            return _tensor(_evaluate.evaluate(call))
        inputs = [t for t, need in zip(sources, needs, strict=True) if need]
        return _layer().apply((call, needs), *inputs)


# paddle.jit.to_static: its default bytecode translator (SOT, full_graph=False) breaks its
# graph at the loss and runs it eagerly, on the tensors' values; its AST translator
# (full_graph=True) leaves the library's Python as it is, and the loss refuses the static graph
paddle.jit.marker.force_dynamic(Paddle.loss)
paddle.jit.ignore_module([sys.modules[__name__.partition(".")[0]]])


@functools.cache
def _parameters(bind) -> tuple[str, ...]:
    return tuple(inspect.signature(bind).parameters)


def _is_paddle(value) -> bool:
    return type(value).__module__.partition(".")[0] == "paddle"


_NOT_ARRAYS = (str, np.ndarray, np.generic, bool, int, float, complex)  # nor foreign arrays


def _foreign(value) -> bool:
    """Whether `value` is an array of a library other than Paddle and NumPy."""
    if value is None or isinstance(value, _NOT_ARRAYS) or _is_paddle(value):
        return False
    return array_api_compat.is_array_api_obj(value)


def _refuse_static():
    msg = (
        "bceloss cannot be traced into a static Paddle graph (paddle.jit.to_static with "
        "full_graph=True, or static mode): it computes on the tensors' values. Use "
        "to_static's default full_graph=False, which runs the loss between graph segments, "
        "or call the loss outside the static function"
    )
    raise RuntimeError(msg)


def _numpy(t, name):
    """A NumPy view of the CPU tensor `t` (bfloat16 as ml_dtypes' bfloat16), zero-copy."""
    if not t.place.is_cpu_place():
        msg = (
            f"bceloss computes Paddle tensors on the CPU only; {name} is on {t.place}: "
            f"move the tensors with .cpu() (the loss and its gradients are then on the CPU)"
        )
        raise ValueError(msg)
    t = t.detach()
    if t.dtype == paddle.bfloat16:
        import ml_dtypes

        return np.from_dlpack(t.view(paddle.uint16)).view(ml_dtypes.bfloat16)
    return np.from_dlpack(t)


def _tensor(a):
    """A NumPy result as a paddle.Tensor sharing its memory (copied where NumPy's is
    read-only or not contiguous, e.g. a broadcast view)."""
    a = np.asarray(a)
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.ascontiguousarray(a).copy()
    if _dtypes.dtype_name(a.dtype) == "bfloat16":  # DLPack has no bfloat16 view: exact casts
        return paddle.utils.dlpack.from_dlpack(a.astype(np.float32)).astype(paddle.bfloat16)
    # paddle.utils.dlpack.from_dlpack's steps for a NumPy array on the CPU, without its
    # device and version negotiation (a quarter of its time), and without the Python layer
    # paddle puts over Tensor.__init__ (it parses a place's name on every call) where the
    # original is at hand; the place given, or Paddle copies to its default device
    out = paddle.base.core.from_dlpack(a.__dlpack__())
    if _TENSOR_INIT is None:
        return paddle.Tensor(out, place=out._place())
    tensor = paddle.Tensor.__new__(paddle.Tensor)
    _TENSOR_INIT(tensor, out, place=out._place())  # the CPU, not the default device
    return tensor


# Tensor.__init__ as Paddle's extension defines it (paddle/__init__.py keeps it there before
# wrapping it), or None
_TENSOR_INIT = getattr(paddle, "original_init", None)


def _seed(grad):
    """The output's gradient: a float for a 0-d one, else a NumPy view."""
    if grad.ndim == 0:
        return float(grad.item())  # item(): a tenth of float(grad)'s time
    return _numpy(grad, "the output's gradient")


def forward(call, needs):
    """(value, the gradients computed now or None): the loss, and the gradients of input and
    target where they are cheap to compute in the loss's own pass: no weight or pos_weight
    gradient wanted, and for 'none' a loss of the input's shape (a weight may widen it)."""
    if needs[2] or needs[3]:
        return _evaluate.evaluate(call), None
    wrt = tuple(i for i in (0, 1) if needs[i])
    if call.reduction != "none":
        return _evaluate.loss_and_grad(call, wrt)
    if tuple(call.input.shape) != call.shape:
        return _evaluate.evaluate(call), None
    n = int(np.prod(call.shape))
    l, gx, gy = _evaluate.elementwise(call, whole_size=n, grad_input=needs[0], grad_target=needs[1])
    return _reduce.loss(call, l), tuple(gx if i == 0 else gy for i in wrt)


def backward(call, needs, early, grad):
    """The gradients of the tensors that need one, in order: `early` (from `forward`)
    scaled by the output's gradient `grad`, or computed now (`_gradients.reduced`)."""
    seed = _seed(grad)
    likes = tuple(getattr(call, name) for name in _ARRAYS)
    if early is not None:
        wanted = [likes[i] for i in (0, 1) if needs[i]]
        grads = [
            _gradients.scaled(g, seed, like.dtype) for g, like in zip(early, wanted, strict=True)
        ]
    else:
        seed = np.asarray(seed) if isinstance(seed, float) else seed
        grads = [g for g in _gradients.reduced(call, seed, needs, likes) if g is not None]
    return tuple(_tensor(g) for g in grads)


@functools.cache
def _layer():
    class BCELossLayer(paddle.autograd.PyLayer):
        """One bceloss call as a Paddle autograd node: apply((call, needs), *tensors), the
        tensors those of input, target, weight, pos_weight that need a gradient."""

        @staticmethod
        def forward(ctx, state, *tensors):
            call, needs = state
            value, early = forward(call, needs)
            ctx.call, ctx.needs, ctx.early = call, needs, early
            return _tensor(value)

        @staticmethod
        def backward(ctx, grad):
            early, ctx.early = ctx.early, None  # serves one backward; a second recomputes
            grads = backward(ctx.call, ctx.needs, early, grad)
            return grads[0] if len(grads) == 1 else grads

    return BCELossLayer


def module_type(cls):
    """The loss class `cls` as a `paddle.nn.Layer` (`_module_types`): tensor options are
    buffers, a Parameter a parameter; to_static runs it eagerly (see `Paddle.loss`)."""
    return _module_types.module_type(
        cls, paddle.nn.Layer, _is_buffer, _module_of, finish=paddle.jit.marker.force_dynamic
    )


def _is_buffer(value) -> bool:
    return isinstance(value, paddle.Tensor) and not isinstance(
        value, paddle.base.framework.Parameter
    )


def _module_of(cls):
    """An empty instance of `cls`'s Layer type, for pickle to fill (`__setstate__`)."""
    return object.__new__(module_type(cls))
