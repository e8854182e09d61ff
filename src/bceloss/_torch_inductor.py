"""The reduced loss's operators lowered for PyTorch's inductor: a compiled graph calls the C
kernel's loops on buffers it allocates itself, without the dispatcher between them.

`bceloss::reduced_loss_and_grad` and `bceloss::reduced_loss` of static shapes on the CPU,
their tensors of the input's dtype, become an extern call with one buffer (the
gradient's elements, then the loss), which the graph reads through views. That call
(`_native.torch_lowered_run`, or its Python twin `run`) hands the data's addresses to the C
kernel's form by a handle that the first call of each call site in a process takes from a
call of the operator itself (which keeps the form: the same loops, the same bits); a call
the kernel leaves to the Python kernel (a total that is not finite, a probability outside
[0, 1]) runs the operator too, which computes or refuses it as it always does. Anything
else is the operator, as before (`lowering.fallback_handler`).
"""

from __future__ import annotations

import math

import torch
from torch._inductor import ir, lowering
from torch._inductor.select_algorithm import extern_kernels
from torch._inductor.virtualized import V

from bceloss import _torch_kernel
from bceloss._kernels import _native

_NAME = "bceloss_reduced_loss"
# a call site's handle of its C form, by its site string (the operator's strings and shapes)
_handles: dict = {}


def run(*args, out):
    """The compiled graph's call in Python (`_native.torch_lowered_run`'s twin, and where it
    leaves a call): `args` the input, target, weight and pos_weight present, then
    (has_weight, has_pos_weight, fn, options, gradient, site, the loss's byte offset in
    `out`)."""
    *tensors, has_w, has_p, fn, options, gradient, site, offset = args
    x, y = tensors[0], tensors[1]
    w = tensors[2] if has_w else None
    p = tensors[2 + has_w] if has_p else None
    handle = _handles.get(site)
    if handle is not None:
        at = out.data_ptr()
        w_at = 0 if w is None else w.data_ptr()
        p_at = 0 if p is None else p.data_ptr()
        call = (handle, gradient, x.data_ptr(), y.data_ptr(), w_at, p_at, at, at + offset)
        if _native.torch_run_into(*call):
            return out
    ops = torch.ops.bceloss
    if gradient:
        loss, gx = ops.reduced_loss_and_grad(fn, x, y, w, p, None, options)
        out[:-1].view(gx.shape).copy_(gx)
    else:
        loss = ops.reduced_loss(fn, x, y, w, p, None, options)
    out[-1] = loss
    handle = _native.torch_last_form(loss)
    if handle is not None:
        _handles[site] = handle
    return out


def _static(node) -> list | None:
    try:
        return [int(s) for s in node.get_size()]
    except TypeError:  # a symbolic size
        return None


def _lowered(op, gradient: bool):
    fallback = lowering.fallback_handler(op, add_to_fallback_set=False)

    def lower(fn, x, y, weight, pos_weight, where, options):
        present = [t for t in (weight, pos_weight) if t is not None]
        sizes = _static(x)
        device = x.get_device()
        if (
            getattr(V.graph, "cpp_wrapper", False)  # (C++ code calls no Python function)
            or where is not None
            or sizes is None
            or device is None
            or device.type != "cpu"
            or x.get_dtype() not in (torch.float32, torch.float64)
            or any(t.get_dtype() != x.get_dtype() or _static(t) is None for t in (y, *present))
        ):
            return fallback(fn, x, y, weight, pos_weight, where, options)
        inputs = [ir.ExternKernel.realize_input(t) for t in (x, y, *present)]
        n = math.prod(sizes)
        # (a handle is a form of these operands, sizes and strides: the site names them)
        layouts = [(_static(t), [int(s) for s in t.get_stride()]) for t in inputs]
        given = (weight is not None, pos_weight is not None)
        site = f"{fn}|{options}|{gradient}|{given}|{layouts}|{x.get_dtype()}"
        layout = ir.FixedLayout(device, x.get_dtype(), [n + 1 if gradient else 1], [1])
        offset = n * x.get_dtype().itemsize if gradient else 0  # (the loss, after the gradient)
        constants = (
            weight is not None,
            pos_weight is not None,
            fn,
            options,
            gradient,
            site,
            offset,
        )
        node = ir.ExternKernelOut(
            layout=layout,
            inputs=inputs,
            constant_args=constants,
            python_kernel_name=f"extern_kernels.{_NAME}",
        )
        buffer = ir.TensorBox.create(node)
        aten = torch.ops.aten
        loss = lowering.lowerings[aten.select.int](buffer, 0, n if gradient else 0)
        if not gradient:
            return loss
        flat = lowering.lowerings[aten.slice.Tensor](buffer, 0, 0, n)
        return loss, lowering.lowerings[aten.view.default](flat, sizes)

    return lower


def _entry():
    """What the graph calls: `_native.torch_lowered_run` (run's twin in C: the site's handle,
    the tensors' data addresses and the loops, without a Python frame; anything else it hands
    to `run`) where the C kernel reads tensors' data itself (`_torch_kernel.reads_tensors`),
    `run` elsewhere."""
    if not _torch_kernel.reads_tensors():
        return run
    _native.torch_lowered_install(_handles, run)
    return _native.torch_lowered_run


def register() -> None:
    """The lowerings (`_torch._lower_for_inductor` calls this once a process)."""
    setattr(extern_kernels, _NAME, _entry())
    for op, gradient in (
        (torch.ops.bceloss.reduced_loss_and_grad.default, True),
        (torch.ops.bceloss.reduced_loss.default, False),
    ):
        lowering.register_lowering(op, type_promotion_kind=None)(_lowered(op, gradient))
