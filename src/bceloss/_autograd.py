"""The losses inside PyTorch's and JAX's autograd, differentiated through the closed form.

Autograd traced through the loss formula would differentiate its `where`s and 0 * inf
limits (NaN at infinite logits) and the float32 detour of the half types. Instead each
loss is one differentiable operation whose derivative is SPEC §2's closed-form gradient,
evaluated by the same array-API formulas; those are ordinary framework ops, so autograd
differentiates them in turn: second order works.

The engine hands a call here when `records(call)` is true:
- PyTorch: grad mode is on and an argument requires grad -> `_torch_function()`, a
  `torch.autograd.Function` whose forward and backward are `torch_forward` and
  `torch_backward` (each takes the LossCall, so a native kernel can replace either).
- JAX: an argument is a tracer (jax.grad, jax.jit, vmap...) -> `jax_loss`, a `jax.custom_jvp`.

Gradients flow to input, target, weight and pos_weight. Nothing here reads a value back to
the host: only the [0, 1] check of `_validation` does.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import array_api_compat

from bceloss import _engine

_ARRAYS = ("input", "target", "weight", "pos_weight")


def _arrays(call) -> tuple:
    return tuple(getattr(call, name) for name in _ARRAYS)


def _bind(call, arrays):
    return dataclasses.replace(call, **dict(zip(_ARRAYS, arrays, strict=True)))


def records(call) -> bool:
    """True when the call's framework is recording operations for differentiation."""
    xp = call.xp
    present = [a for a in _arrays(call) if a is not None]
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.is_grad_enabled() and any(a.requires_grad for a in present)
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return any(isinstance(a, jax.core.Tracer) for a in present)
    return False


def loss(call):
    """The loss of `call`, differentiable by its framework (see the module docstring)."""
    if array_api_compat.is_torch_namespace(call.xp):
        return _torch_function().apply(_bind(call, (None,) * 4), *_arrays(call))
    return jax_loss(call)


def gradients(call, needs):
    """The elementwise d l / d (input, target, weight, pos_weight), None where not in `needs`.

    In the computation dtype, broadcast to the loss's shape; ignored labels give 0.
    """
    xp = call.xp
    gx = gy = gw = gp = None
    if needs[0] or needs[1]:
        _, gx, gy = _engine._elementwise(
            call, loss=False, grad_input=needs[0], grad_target=needs[1]
        )
    if needs[2]:
        # l = w f(x, y, p): d l / d w is the loss without the weight
        gw, _, _ = _engine._elementwise(dataclasses.replace(call, weight=None))
        if call.reduction == "weighted_mean":
            # d/dw_i (sum w l / sum w) = (l_i - mean) / sum w; _reduce* divide by sum w
            mean = _engine.reduced(call, _engine._elementwise(call)[0])
            gw = gw - xp.astype(mean, gw.dtype)
            if call.where is not None:
                gw = xp.where(xp.broadcast_to(call.where, call.shape), gw, xp.zeros_like(gw))
    if needs[3]:
        gp = _engine.pos_weight_gradient(call)
    return tuple(None if g is None else xp.broadcast_to(g, call.shape) for g in (gx, gy, gw, gp))


def _fused_torch(name, call, *args):
    """bceloss._kernels' `name` for a PyTorch CPU call above the kernel's threshold, or None."""
    if math.prod(call.shape) < _engine.KERNEL_MIN_SIZE:
        return None
    from bceloss import _kernels

    return getattr(_kernels, name)(call, *args)


def torch_forward(call):
    """The forward of the PyTorch Function: the loss of `call` (run with grad mode off)."""
    fused = _fused_torch("torch_loss", call)  # CPU tensors: the NumPy kernel, zero-copy
    return _engine.evaluate(call) if fused is None else fused


def torch_backward(call, grad, needs):
    """The backward of the PyTorch Function: `grad` times d loss / d each array of `call`.

    Args:
      call: the LossCall, its arrays being the Function's saved tensors.
      grad: the gradient of the output (0-d for 'mean' and 'sum', else the loss's shape).
      needs: four bools, which of input, target, weight, pos_weight need a gradient.

    Returns:
      Four tensors (None where not needed), each of its array's shape and dtype.
    """
    fused = _fused_torch("torch_gradients", call, grad, needs)
    if fused is not None:
        return fused
    with _engine._quiet(call.xp):
        parts = gradients(call, needs)
    return tuple(
        None if g is None else _engine._reduce_gradient(call, grad * g, like, like.dtype)
        for g, like in zip(parts, _arrays(call), strict=True)
    )


@functools.cache
def _torch_function():
    import torch

    class BCELossFunction(torch.autograd.Function):
        """One bceloss call as a PyTorch autograd node; its arguments: (call, *arrays)."""

        @staticmethod
        def forward(call, *arrays):
            return torch_forward(_bind(call, arrays))

        @staticmethod
        def setup_context(ctx, inputs, output):
            call, *arrays = inputs
            ctx.call = call  # no tensors but the `where` mask: they are saved below
            ctx.save_for_backward(*arrays)

        @staticmethod
        def backward(ctx, grad):
            call = _bind(ctx.call, ctx.saved_tensors)
            return (None, *torch_backward(call, grad, ctx.needs_input_grad[1:]))

    return BCELossFunction


def jax_loss(call):
    """The loss of `call` as a `jax.custom_jvp` whose derivative is the closed form."""
    import jax
    from jax.custom_derivatives import SymbolicZero

    static = _bind(call, (None,) * 4)

    @jax.custom_jvp
    def bce(*arrays):
        return _engine.evaluate(_bind(static, arrays))

    def jvp(primals, tangents):
        call = _bind(static, primals)
        needs = tuple(t is not None and not isinstance(t, SymbolicZero) for t in tangents)
        parts = gradients(call, needs)
        terms = [g * t for g, t in zip(parts, tangents, strict=True) if g is not None]
        value = bce(*primals)
        if not terms:
            return value, call.xp.zeros_like(value)
        return value, _engine._reduce(call, functools.reduce(lambda a, b: a + b, terms))

    bce.defjvp(jvp, symbolic_zeros=True)
    return bce(*_arrays(call))
