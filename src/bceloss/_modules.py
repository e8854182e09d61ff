"""Loss classes: they hold settings and call the functional form (torch.nn style).

A loss class takes its framework's module type (`torch.nn.Module` for the core's) when that
framework is imported in the process as the loss is made: its array options become the
module's buffers (in `state_dict`, moved and cast by `.to()`), and it sits in a model as
PyTorch's own losses do. Without the framework it is a plain class, and `import bceloss`
imports no framework either way.
"""

from __future__ import annotations

import functools
import inspect
import sys

from bceloss import _call, _dispatch, _functional, _module_types, _validation

# (by name: a compiler tracing a loss's forward then reads `_dispatch`'s globals by one path)
from bceloss._dispatch import compiled_loss, torch_compiling


def _module_type(cls):
    """`cls` (a loss class) as its framework's module type, or None where the loss stays a
    plain class: its framework is not imported in this process (so none is imported here) or
    has no module adapter, or `cls` is a module type already, or a subclass of one (a user's,
    or the one torch.nn.utils.parametrize makes), which is its own type."""
    if hasattr(cls, "_bceloss_plain") or cls.framework not in sys.modules:
        return None
    # one import statement a framework: torch.compile traces a loss made inside a model
    if cls.framework == "torch":
        from bceloss import _torch

        return _torch.module_type(cls)
    if cls.framework == "mindspore":
        from bceloss import _mindspore

        return _mindspore.module_type(cls)
    if cls.framework == "paddle":
        from bceloss import _paddle

        return _paddle.module_type(cls)
    return None


class _Loss:
    """A loss that holds its options; call it as loss(input, target)."""

    framework = "torch"  # whose module type the class takes, once that framework is imported
    arrays = ("weight", "pos_weight", "where")  # the options that are arrays: a module's buffers

    def __new__(cls, *args, **kwargs):
        made = _module_type(cls)
        if made is not None:  # its own __new__ (MindSpore's Cell has one)
            return made.__new__(made, *args, **kwargs)
        return object.__new__(cls)

    def __repr__(self):
        return f"{type(self).__name__}({self._settings()})"

    def _settings(self) -> str:
        """The options other than their defaults, arrays left out: what the repr shows, as
        PyTorch's losses show none of their tensors."""
        plain = vars(type(self)).get("_bceloss_plain", type(self))
        defaults = inspect.signature(plain.__init__).parameters
        return ", ".join(
            f"{k}={v!r}"
            for k, v in self._options().items()
            if k not in self.arrays and k in defaults and v != defaults[k].default
        )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = vars(cls).get("forward")
        if forward is not None and "__call__" not in vars(cls):
            cls.__call__ = _calling(forward)
        if not hasattr(cls, "_bceloss_plain"):  # (a plain class, not a module type's)
            _module_types.known(cls)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _array(self, name):
        """The array option `name` (a module type reads its buffers: `_module_types`)."""
        return getattr(self, name)

    def forward(self, input, target):
        """The loss of `input` against `target`, with the options held."""
        return _call.run(self._bceloss_bind(input, target))

    def __reduce_ex__(self, protocol):
        # made again as the plain class it is: `__new__` would give the module type once the
        # framework is imported (whose own pickling a module type keeps)
        if "_bceloss_plain" in vars(type(self)):
            return super().__reduce_ex__(protocol)
        return (_plain_instance, (type(self),), self.__dict__)


def _calling(forward):
    """`__call__` of a loss class: the instance's `forward` (a subclass's, when it has one),
    with the signature of the class's own (inspect reads `__wrapped__`)."""

    @functools.wraps(forward)
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    return __call__


def _plain_instance(cls):
    """An empty instance of the plain loss class `cls`, for pickle and copy to fill."""
    return object.__new__(cls)


class _CoreLoss(_Loss):
    """A core loss class: its forward is the functional form with the options held, which a
    compiler traces as one operator (`_functional.loss_function`)."""

    function = None  # the functional form

    def forward(self, input, target):
        """The loss of `input` against `target`, with the options held."""
        # the functional form's first routes straight away, which a small loss in a training
        # loop pays for less than its wrappers: inside a graph being compiled its operator
        # (the less Python a compiler reads, the fewer checks each call of its graph makes),
        # else those of `_forward_eager`
        if torch_compiling():
            function = type(self).function
            options = self._options()
            bound = {"input": input, "target": target, **options}
            done = compiled_loss(function._bceloss_name, bound)
            return function(input, target, **options) if done is None else done
        return self._forward_eager(input, target)

    def _forward_eager(self, input, target):
        """`forward` outside a graph being traced: the module's own lane, kept by its
        adapter, then the express lane, then the functional form."""
        function = type(self).function
        lane = self.__dict__.get(_module_types.LANE)
        if lane is not None:
            done = lane(self, input, target)
            if done is not None:
                return done
        options = self._options()
        express = _dispatch.EXPRESS_LANES.get(type(input))
        if express is not None:
            done = express(function._bceloss_bind, (input, target), options, self)
            if done is not None:
                return done
        return function(input, target, **options)

    def _bceloss_bind(self, input, target):
        return type(self).function._bceloss_bind(input, target, **self._options())


class BCELoss(_CoreLoss):
    """Binary cross-entropy between probabilities and targets.

    For input x in [0, 1], target y, weight w (1 when None), elementwise

        l = -w * (y * max(log(x), -100) + (1 - y) * max(log(1 - x), -100))

    then 'none' keeps l, 'sum' adds it up and 'mean' divides that sum by the number of
    elements (not by the sum of the weights, as in PyTorch); 'weighted_mean' divides it by
    the sum of the weights. The logs are clamped at -100 as in PyTorch, so the loss stays
    finite at x = 0 and x = 1. The gradient is

        d l / d x = w * (x - y) / max(x * (1 - x), 1e-12)
        d l / d y = w * (max(log(1 - x), -100) - max(log(x), -100))

    Options (keyword-only, here and in the functional form):

    - label_smoothing=s: y becomes y (1 - s) + s / 2 (Keras); d l / d y gains a factor 1 - s.
    - where=m: a bool array broadcastable to the input; only the elements where m is True
      count. 'mean' divides by their number, so f(x, y, where=m) == f(x[m], y[m]);
      'none' gives 0 elsewhere, and NaN or inf there reaches neither loss nor gradient.
    - reduction='weighted_mean': sum(w l) / sum(w) over the kept elements, w the weight
      broadcast to the loss's shape ('mean' when weight is None). Weights adding up to 0
      give NaN, as an empty 'mean' does. value_and_grad does not differentiate w; PyTorch
      and JAX autograd do, through the denominator too.

    Shape:
      input: any shape, floating dtype (float16, bfloat16, float32, float64).
      target: input's shape; floating, or integer/bool (cast to input's dtype).
      weight, where: broadcastable to input's shape.
      result: input's shape for 'none', else 0-d; input's dtype (float16 and bfloat16
      are computed in float32 and rounded once).

    Raises:
      TypeError: an argument that is not an array, a non-floating input, a reduction
        that is not a str, a label_smoothing that is not a number, a non-bool where.
      ValueError: an unknown reduction, mismatched shapes, input outside [0, 1] (where
        kept), label_smoothing outside [0, 1].
      RuntimeError: in a graph compiled by `torch.compile`, an input outside [0, 1] where
        the operators' C kernel runs the call (PyTorch's C ABI turns its ValueError into a
        RuntimeError with the same message; see docs/backends.md).

    Examples:
      >>> import numpy as np, bceloss
      >>> loss = bceloss.BCELoss(weight=np.array([1.0, 2.0, 2.0], np.float32))
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> print(loss(p, y))
      0.38240483
    """

    function = _functional.binary_cross_entropy

    def __init__(self, weight=None, reduction="mean", *, label_smoothing=0.0, where=None):
        _validation.reduction(reduction)
        _validation.smoothing(label_smoothing)
        self.weight = weight
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.where = where

    def _options(self):
        return {
            "weight": self._array("weight"),
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "where": self._array("where"),
        }


class BCEWithLogitsLoss(_CoreLoss):
    """Binary cross-entropy between sigmoid(logits) and targets, computed from the logits.

    For logits x, target y, weight w and pos_weight p (1 when None), lw = 1 + (p - 1) y,

        l = w * ((1 - y) * x + lw * softplus(-x))

    evaluated as the cancellation-free (1 - y) max(x, 0) + p y max(-x, 0)
    + lw log1p(exp(-|x|)), accurate to a few ulp for every finite x. Infinite logits give
    their limits: x = +inf gives inf for y < 1 and 0 for y = 1, x = -inf gives inf for
    y > 0 and 0 for y = 0. NaN propagates. Reductions as in `BCELoss`. The gradient is

        d l / d x = w * (lw * sigmoid(x) - p * y)
        d l / d y = w * ((p - 1) * softplus(-x) - x)

    The options label_smoothing, where and reduction='weighted_mean' are those of
    `BCELoss`; with label_smoothing, 1 - y is computed as (1 - y)(1 - s) + s / 2.

    Shape:
      input: any shape, floating dtype (float16, bfloat16, float32, float64).
      target: input's shape; floating (promoted with input), or integer/bool (cast).
      weight, pos_weight, where: broadcastable to input's shape (a (C,) pos_weight weighs
        the positives of each of C labels in the last dimension).
      result: input's shape for 'none', else 0-d.

    Raises:
      TypeError: an argument that is not an array, a non-floating input, a reduction
        that is not a str, a label_smoothing that is not a number, a non-bool where.
      ValueError: an unknown reduction, mismatched shapes, label_smoothing outside [0, 1].

    Examples:
      >>> import numpy as np, bceloss
      >>> loss = bceloss.BCEWithLogitsLoss(pos_weight=np.array([1.0, 2.0], np.float32))
      >>> x = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
      >>> y = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)
      >>> print(loss(x, y))
      1.6534557
    """

    function = _functional.binary_cross_entropy_with_logits

    def __init__(
        self, weight=None, reduction="mean", pos_weight=None, *, label_smoothing=0.0, where=None
    ):
        _validation.reduction(reduction)
        _validation.smoothing(label_smoothing)
        self.weight = weight
        self.reduction = reduction
        self.pos_weight = pos_weight
        self.label_smoothing = label_smoothing
        self.where = where

    def _options(self):
        return {
            "weight": self._array("weight"),
            "reduction": self.reduction,
            "pos_weight": self._array("pos_weight"),
            "label_smoothing": self.label_smoothing,
            "where": self._array("where"),
        }
