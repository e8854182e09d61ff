"""The MindSpore adapter: `mindspore.Tensor` in and out, the loss inside MindSpore's autograd.

MindSpore tensors are not array API arrays: the loss functions hand a call with one to this
adapter first (`_dispatch.edge_adapter`). The call is validated on NumPy views of the
tensors (`Tensor.asnumpy()`, zero-copy for contiguous CPU tensors), so errors are the NumPy
route's. In PyNative mode it runs as a Cell (`_EagerLoss`) whose `construct` computes the
loss on NumPy views (the fused kernel) and whose `bprop` gives the closed-form gradients
(`_evaluate.loss_and_grad`, `_gradients.reduced`); inside `mindspore.grad` and
`value_and_grad`, where the loss's own pass computes them, the construct does, for the
bprop. A graph (`mindspore.jit`, GRAPH_MODE) runs it as one `ops.Custom(func_type="pyfunc")`
operator computing the same on NumPy, whose `bprop` is a second such operator:
`mindspore.grad` and `mindspore.value_and_grad` differentiate the loss in all three.

The graph compiler reads the Python source of what it compiles, following `__wrapped__`:
each loss function's `__wrapped__` is set here to a graph twin (`_GRAPH_TWINS`) that calls
the operator directly; the checks then run in the operator's shape and dtype inference
(when the graph is compiled) and in its function (when it runs). The loss classes become
`mindspore.nn.Cell`s whose `construct` runs the functional form and whose `__wrapped__`
construct is the graph twin.

A NumPy array beside MindSpore tensors is a constant: it enters the operator as a tensor
and gets no gradient. Any other kind of array beside a MindSpore tensor is a TypeError.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import sys

import mindspore
import ml_dtypes
import numpy as np
from mindspore import nn, ops

from bceloss import _call, _dispatch, _dtypes, _evaluate, _functional, _gradients, _memo

Tensor = mindspore.Tensor
# PyNative's executor, which knows whether autograd records (`_recording`): private, and
# moved in MindSpore 2.9 (the old module warns that it is deprecated)
try:
    from mindspore.graph.api import _pynative_executor as _PYNATIVE
except ImportError:
    try:
        from mindspore.common.api import _pynative_executor as _PYNATIVE
    except ImportError:
        _PYNATIVE = None


def _warm_up():
    """Meet MindSpore 2.10's failed NumPy initialization on a harmless op.

    Built against NumPy 1.x, MindSpore 2.10 under NumPy 2 fails to initialize NumPy's C
    API on its first tensor-tensor op, once per process: that op raises `SystemError ...
    numpy.core.multiarray failed to import` (an op taking a Python number instead passes and
    spends the failure). Every op after it works. Here the first op is this one.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        a = Tensor(np.zeros(1, np.float32))
        with contextlib.suppress(SystemError):
            a * a


_warm_up()

_SLOTS = _call.ARRAYS  # arrays a call may carry


def _numpy(t):
    """A MindSpore tensor's NumPy view (zero-copy when contiguous on the CPU); bfloat16,
    which MindSpore cannot show NumPy 2, through float32 (exact)."""
    if t.dtype == mindspore.bfloat16:
        return t.astype(mindspore.float32).asnumpy().astype(ml_dtypes.bfloat16)
    return t.asnumpy()


class MindSpore:
    """The edge adapter of MindSpore tensors (`_dispatch._EDGE_ADAPTERS`)."""

    def loss(self, bind, args, kwargs):
        """The loss of `bind`'s call with MindSpore tensors among `args` and `kwargs`, as a
        MindSpore tensor inside MindSpore's autograd."""
        bound = _signature(bind).bind(*args, **kwargs).arguments
        names, arrays, statics = [], [], []
        for name, value in bound.items():
            if isinstance(value, (Tensor, np.ndarray)):
                names.append(name)
                arrays.append(value)
            else:
                statics.append((name, value))
        _one_kind(bound)
        # the checks, on NumPy views: the NumPy route's errors
        views = {
            n: a if isinstance(a, np.ndarray) else _numpy(a)
            for n, a in zip(names, arrays, strict=True)
        }
        call = _memo.validated(bind, (), {**views, **dict(statics)})
        constant = tuple(isinstance(a, np.ndarray) for a in arrays)
        tensors = [
            Tensor.from_numpy(np.ascontiguousarray(a)) if c else a
            for a, c in zip(arrays, constant, strict=True)
        ]
        bf16 = call.dtype == ml_dtypes.bfloat16 or any(
            isinstance(a, Tensor) and a.dtype == mindspore.bfloat16 for a in arrays
        )
        if bf16:  # computed in float32 (MindSpore's cast is differentiable), rounded once
            tensors = [
                t.astype(mindspore.float32) if t.dtype == mindspore.bfloat16 else t for t in tensors
            ]
        out = _eager_cell(bind, tuple(statics), tuple(names), constant)(*tensors)
        return out.astype(mindspore.bfloat16) if bf16 and call.dtype == ml_dtypes.bfloat16 else out


@functools.cache
def _signature(bind):
    return inspect.signature(bind)


def _one_kind(bound):
    """TypeError when an array of another library (not MindSpore, not NumPy) is among the
    arguments, in the words of `_dispatch.namespace`."""
    for name, value in bound.items():
        if value is None or isinstance(value, (Tensor, np.ndarray, str, int, float, bool)):
            continue
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            first = next(n for n, v in bound.items() if isinstance(v, Tensor))
            kind = type(value).__module__.partition(".")[0]
            raise TypeError(_dispatch.mixed_kinds(first, "mindspore", name, kind))


# --- the operators ----------------------------------------------------------------------


def _shape_only(shape, dtype=np.float32):
    """A read-only array of `shape` without memory (for checks of shapes and dtypes)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def _np_dtype(ms_dtype):
    """NumPy's dtype of a MindSpore dtype (a tensor type, as inference gives it, included)."""
    if hasattr(ms_dtype, "element_type"):
        ms_dtype = ms_dtype.element_type()
    for name in ("bfloat16", "float16", "float32", "float64", "bool_", "int8", "int16"):
        if ms_dtype == getattr(mindspore, name):
            return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name.rstrip("_"))
    for name in ("int32", "int64", "uint8"):
        if ms_dtype == getattr(mindspore, name):
            return np.dtype(name)
    msg = f"a MindSpore dtype without a NumPy twin: {ms_dtype}"
    raise TypeError(msg)


def _ms_dtype(np_dtype):
    return getattr(mindspore, _dtypes.dtype_name(np_dtype))


def _maker(bind, statics, names):
    """The validated call of `bind` on arrays given in the order of `names`, with the other
    arguments `statics` (input and target by position: their names differ, logits, labels)."""
    options = dict(statics)

    def make(*arrays):
        keywords = dict(zip(names[2:], arrays[2:], strict=True))
        return _memo.validated(bind, arrays[:2], {**keywords, **options})

    return make


def _forward_value(call, value=None):
    """The loss of a call on NumPy arrays (`value` where computed already), as MindSpore gets
    it (bfloat16 as float32)."""
    value = _evaluate.evaluate(call) if value is None else value
    return np.asarray(value, np.float32 if call.dtype == ml_dtypes.bfloat16 else call.dtype)


class _EagerLoss(nn.Cell):
    """The loss in PyNative mode: `construct` computes on NumPy views of its tensors and
    `bprop` gives the closed-form gradients (`_gradients_of`). MindSpore copies a Custom
    pyfunc's arrays in and out, and runs it among its own busy threads; a Cell's Python runs
    on the tensors' memory (3 to 6 times less time a `value_and_grad` than the operator)."""

    # recorded forwards whose gradients wait for their bprop: a forward whose bprop never
    # comes (a network left in set_grad(True) for evaluation) keeps them until pushed out
    EARLY_MAX = 4

    def __init__(self, make, names, constant):
        super().__init__()
        self._make, self._names, self._constant = make, names, constant
        self._needs = _needs(names, constant)
        # a recorded forward's gradients (for an output gradient of 1), by the memory of its
        # output and inputs, which its bprop receives (as other Tensor objects)
        self._early = {}

    def construct(self, *tensors):
        arrays = [_numpy(t) for t in tensors]
        call = self._make(*arrays)
        if _recording() and _fused(call, self._needs) is not None:
            # under grad / value_and_grad the bprop follows, and these gradients come from
            # the loss's own pass: computed now, once
            value, grads = _value_and_gradients(
                call, self._names, self._constant, arrays, np.ones((), np.float32)
            )
            out = _tensor(_forward_value(call, value))
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # (threads)
                while len(self._early) >= self.EARLY_MAX:
                    del self._early[next(iter(self._early))]  # the oldest
            self._early[_memory(out, arrays)] = grads
            return out
        return _tensor(_forward_value(call))

    def bprop(self, *args):
        *tensors, out, dout = args
        arrays = [_numpy(t) for t in tensors]
        seed = _numpy(dout)
        early = self._early.pop(_memory(out, arrays), None)
        s = float(seed.reshape(())) if seed.size == 1 else math.nan
        if early is not None and math.isfinite(s) and s != 0:
            # times the output's gradient (loss scaling, a sum)
            grads = early if isinstance(early, tuple) else (early,)
            grads = tuple(_gradients.scaled(g, s, g.dtype) for g in grads)
        else:
            call = self._make(*arrays)
            grads = _value_and_gradients(call, self._names, self._constant, arrays, seed)[1]
            grads = grads if isinstance(grads, tuple) else (grads,)
        return tuple(_tensor(g) for g in grads)


def _memory(out, arrays) -> tuple:
    """Where the output and the input arrays of a call lie."""
    return (_numpy(out).ctypes.data, *(a.ctypes.data for a in arrays))


def _recording() -> bool:
    """Whether MindSpore's PyNative autograd records the call (inside `mindspore.grad` or
    `value_and_grad`: its bprop will run); False where MindSpore cannot tell."""
    flag = getattr(_PYNATIVE, "grad_flag", None)
    return bool(flag()) if flag is not None else False


def _tensor(a):
    """A MindSpore tensor on the memory of the NumPy array `a` (copied if not C-contiguous;
    0-d stays 0-d, which np.ascontiguousarray would not keep)."""
    return Tensor.from_numpy(a if a.flags.c_contiguous and a.flags.writeable else a.copy())


@functools.cache
def _eager_cell(bind, statics, names, constant):
    """The PyNative Cell of calls of `bind` (as `_operator`'s arguments)."""
    return _EagerLoss(_maker(bind, statics, names), names, constant)


@functools.cache
def _operator(bind, statics, names, constant):
    """The Custom operator of calls of `bind` with the arrays `names` (in order; `constant`:
    NumPy arrays, no gradient) and the other arguments `statics`, and whether its result is
    a scalar (the operator returns shape (1,) for it: MindSpore's pyfunc has no 0-d output):
    what a graph (`mindspore.jit`, GRAPH_MODE) runs.
    """
    make = _maker(bind, statics, names)

    def infer_shape(*shapes):
        # the checks of shapes, when a graph is compiled (in PyNative: already done)
        call = make(
            *(
                _shape_only(s, bool if n == "where" else np.float32)
                for n, s in zip(names, shapes, strict=True)
            )
        )
        return (1,) if call.reduction != "none" else call.shape

    def infer_dtype(*dtypes):
        call = make(*(_shape_only((), _np_dtype(d)) for d in dtypes))
        return _ms_dtype(call.dtype) if call.dtype != ml_dtypes.bfloat16 else mindspore.float32

    def forward(*arrays):
        call = make(*arrays)
        value = _forward_value(call)
        return value.reshape(1) if call.reduction != "none" else value

    def backward(*arrays_and_dout):
        *arrays, dout = arrays_and_dout
        call = make(*arrays)
        return _gradients_of(call, names, constant, arrays, dout)

    scalar = (
        make(*(_shape_only((1,), bool if n == "where" else np.float32) for n in names)).reduction
        != "none"
    )
    n = len(names)
    backward_op = ops.Custom(
        _fixed(backward, n + 1),
        lambda *shapes: tuple(shapes[:n]) if n > 1 else shapes[0],
        lambda *dtypes: tuple(dtypes[:n]) if n > 1 else dtypes[0],
        "pyfunc",
    )
    forward_op = ops.Custom(
        _fixed(forward, n), infer_shape, infer_dtype, "pyfunc", bprop=_bprop(backward_op, n)
    )
    return forward_op, scalar


def _gradients_of(call, names, constant, arrays, dout):
    """The gradients of the loss times `dout` with respect to each array (zeros for NumPy
    constants and `where`), each of its array's shape and dtype."""
    return _value_and_gradients(call, names, constant, arrays, dout)[1]


def _needs(names, constant) -> tuple[bool, ...]:
    """Which of input, target, weight, pos_weight need a gradient: the arrays given as
    `names` (in order) that are not NumPy constants."""
    slots = [_slot(name, i) for i, name in enumerate(names)]
    return tuple(s in slots and not constant[slots.index(s)] for s in range(4))


def _fused(call, needs) -> tuple[int, ...] | None:
    """The positions (0 input, 1 target) whose gradients the loss's own pass computes
    (`_evaluate.loss_and_grad`), or None where they are computed apart: reduction='none', a
    weight or pos_weight gradient wanted, or neither input nor target wanted."""
    if call.reduction == "none" or needs[2] or needs[3]:
        return None
    return tuple(i for i in (0, 1) if needs[i]) or None


def _value_and_gradients(call, names, constant, arrays, dout):
    """(the loss where the gradients come from its own pass, else None; `_gradients_of`)."""
    slots = [_slot(name, i) for i, name in enumerate(names)]
    needs = _needs(names, constant)
    wrt = _fused(call, needs)
    seed = float(dout.reshape(())) if call.reduction != "none" else math.nan
    value = None
    if wrt is not None and math.isfinite(seed) and seed != 0:
        value, grads = _evaluate.loss_and_grad(call, wrt, seed=seed)
        by_slot = dict(zip(wrt, grads, strict=True))
    else:
        scalar = call.reduction != "none"
        likes = tuple(getattr(call, _SLOTS[s]) for s in range(4))
        likes = tuple(a if a is not None else np.empty(0) for a in likes)
        g = dout.reshape(()) if scalar else dout
        grads = _gradients.reduced(call, g, needs, likes)
        by_slot = {i: grads[i] for i in range(4) if grads[i] is not None}
    out = []
    for i, a in zip(slots, arrays, strict=True):
        g = by_slot.get(i)
        out.append(np.zeros_like(a) if g is None else np.asarray(g, a.dtype).reshape(a.shape))
    return value, (tuple(out) if len(out) > 1 else out[0])


def _slot(name, position):
    """The call's array (index into `_SLOTS`) that argument `name` at `position` is: the
    first two arguments are input and target whatever their names (logits, labels)."""
    return position if position < 2 else _SLOTS.index(name)


# MindSpore counts a pyfunc's inputs from its signature: one named function per arity


def _fixed(fn, n):
    def f2(a, b):
        return fn(a, b)

    def f3(a, b, c):
        return fn(a, b, c)

    def f4(a, b, c, d):
        return fn(a, b, c, d)

    def f5(a, b, c, d, e):
        return fn(a, b, c, d, e)

    def f6(a, b, c, d, e, f):
        return fn(a, b, c, d, e, f)

    return {2: f2, 3: f3, 4: f4, 5: f5, 6: f6}[n]


def _bprop(backward, n):
    """The bprop of a forward operator of `n` inputs: the backward operator on the inputs
    and the output's gradient (named functions: the graph compiler reads their source)."""

    def bprop2(a, b, out, dout):
        return backward(a, b, dout)

    def bprop3(a, b, c, out, dout):
        return backward(a, b, c, dout)

    def bprop4(a, b, c, d, out, dout):
        return backward(a, b, c, d, dout)

    def bprop5(a, b, c, d, e, out, dout):
        return backward(a, b, c, d, e, dout)

    return {2: bprop2, 3: bprop3, 4: bprop4, 5: bprop5}[n]


# --- graph mode: the twins the compiler reads -------------------------------------------


# a graph holds no function: the twins name their bind by the global that holds it


@ops.constexpr(reuse_result=False)
def _graph_operator(bind, statics, names):
    return _operator(globals()[bind], statics, names, (False,) * len(names))[0]


@ops.constexpr(reuse_result=False)
def _graph_scalar(bind, statics, names):
    return _operator(globals()[bind], statics, names, (False,) * len(names))[1]


@ops.constexpr(reuse_result=False)
def _names(present):
    return tuple(n for n, p in zip(_SLOTS, present, strict=True) if p)


def _graph_loss(bind, statics, input, target, weight, pos_weight, where):
    """The loss in a graph: the operator on the arrays present (read by the compiler)."""
    present = (True, True, weight is not None, pos_weight is not None, where is not None)
    names = _names(present)
    arrays = (input, target)
    if weight is not None:
        arrays = (*arrays, weight)
    if pos_weight is not None:
        arrays = (*arrays, pos_weight)
    if where is not None:
        arrays = (*arrays, where)
    out = _graph_operator(bind, statics, names)(*arrays)
    if _graph_scalar(bind, statics, names):
        return ops.reshape(out, ())
    return out


# the binds the twins call, by name: set by `install_twins`
_CORE_LOGITS = _CORE_PROBABILITIES = _MS_LOGITS = _MS_PROBABILITIES = None
_CELL_LOGITS = _CELL_PROBABILITIES = None


def _twin_logits(
    input,
    target,
    weight=None,
    reduction="mean",
    pos_weight=None,
    *,
    label_smoothing=0.0,
    where=None,
):
    statics = (("reduction", reduction), ("label_smoothing", label_smoothing))
    return _graph_loss("_CORE_LOGITS", statics, input, target, weight, pos_weight, where)


def _twin_probabilities(
    input, target, weight=None, reduction="mean", *, label_smoothing=0.0, where=None
):
    statics = (("reduction", reduction), ("label_smoothing", label_smoothing))
    return _graph_loss("_CORE_PROBABILITIES", statics, input, target, weight, None, where)


def _twin_mindspore_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    statics = (("reduction", reduction),)
    return _graph_loss("_MS_LOGITS", statics, input, target, weight, pos_weight, None)


def _twin_mindspore_probabilities(input, target, weight=None, reduction="mean"):
    statics = (("reduction", reduction),)
    return _graph_loss("_MS_PROBABILITIES", statics, input, target, weight, None, None)


def _twin_cell_logits(logits, labels, weight=None, reduction="mean", pos_weight=None):
    statics = (("reduction", reduction),)
    return _graph_loss("_CELL_LOGITS", statics, logits, labels, weight, pos_weight, None)


def _twin_cell_probabilities(logits, labels, weight=None, reduction="mean"):
    statics = (("reduction", reduction),)
    return _graph_loss("_CELL_PROBABILITIES", statics, logits, labels, weight, None, None)


# the loss functions with a graph twin: (module, name) -> (twin, the global naming its bind)
_TWINS = {
    ("bceloss._functional", "binary_cross_entropy_with_logits"): (_twin_logits, "_CORE_LOGITS"),
    ("bceloss._functional", "binary_cross_entropy"): (_twin_probabilities, "_CORE_PROBABILITIES"),
    ("bceloss.compat.mindspore", "binary_cross_entropy_with_logits"): (
        _twin_mindspore_logits,
        "_MS_LOGITS",
    ),
    ("bceloss.compat.mindspore", "binary_cross_entropy"): (
        _twin_mindspore_probabilities,
        "_MS_PROBABILITIES",
    ),
    ("bceloss.compat.mindspore", "_cell_logits"): (_twin_cell_logits, "_CELL_LOGITS"),
    ("bceloss.compat.mindspore", "_cell_probabilities"): (
        _twin_cell_probabilities,
        "_CELL_PROBABILITIES",
    ),
}


def install_twins(module):
    """Give the loss functions of `module` their graph twins: the function the graph
    compiler reads (`__wrapped__`); `inspect.signature` keeps the function's own."""
    for name in dir(module):
        twin = _TWINS.get((module.__name__, name))
        fn = getattr(module, name)
        if twin is None or getattr(fn, "__wrapped__", None) is twin[0]:
            continue
        fn.__signature__ = inspect.signature(fn._bceloss_bind)
        globals()[twin[1]] = fn._bceloss_bind
        fn.__wrapped__ = twin[0]


# --- the loss classes as Cells ----------------------------------------------------------

_CELL_TYPES: dict = {}


def module_type(cls):
    """The loss class `cls` as a `mindspore.nn.Cell`: MindSpore tensors given as its array
    options are non-trainable Parameters (in checkpoints); NumPy ones stay constants."""
    made = _CELL_TYPES.get(cls)
    if made is None:
        made = _CELL_TYPES[cls] = _make_cell_type(cls)
    return made


def _make_cell_type(cls):
    class Cell(cls, nn.Cell):
        _bceloss_plain = cls  # the plain class, which `_modules._module_type` stops at
        __call__ = nn.Cell.__call__

        def __new__(klass, *args, **kwargs):
            return nn.Cell.__new__(klass)

        def __init__(self, *args, **kwargs):
            nn.Cell.__init__(self)
            cls.__init__(self, *args, **kwargs)

        def __setattr__(self, name, value):
            if (
                name in cls.arrays
                and isinstance(value, Tensor)
                and not isinstance(value, mindspore.Parameter)
            ):
                value = mindspore.Parameter(value, name=name, requires_grad=False)
            nn.Cell.__setattr__(self, name, value)

        __repr__ = nn.Cell.__repr__

        def extend_repr(self):
            return self._settings()

        # the functional form, with the options held (the compiler reads the same code)
        construct = cls.forward

    Cell.__name__, Cell.__qualname__ = cls.__name__, cls.__qualname__
    Cell.__module__, Cell.__doc__ = cls.__module__, cls.__doc__
    return Cell


install_twins(_functional)
if "bceloss.compat.mindspore" in sys.modules:
    install_twins(sys.modules["bceloss.compat.mindspore"])
