"""The MindSpore flavour: MindSpore's names, argument order and checks over the core's math.

`binary_cross_entropy` and `binary_cross_entropy_with_logits` follow
`mindspore.mint.nn.functional`; `BCELoss` and `BCEWithLogitsLoss` follow `mindspore.nn`
(note `BCEWithLogitsLoss(reduction, weight, pos_weight)`: reduction first) and are called as
`loss(logits, labels)`. MindSpore's checks: float16, bfloat16 and float32 only (float64 is a
TypeError), a floating target (integer and bool are a TypeError), and reduction names in any
case ('MEAN' is 'mean'). The numbers are the core's; see `bceloss.BCEWithLogitsLoss` and
`bceloss.BCELoss` for the math.
"""

from __future__ import annotations

import importlib
import sys

from bceloss import _modules, _validation
from bceloss._functional import loss_function

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
]

RULES = _validation.Rules(
    dtypes=("float16", "bfloat16", "float32"),
    integral_target=False,
    reduction_any_case=True,
)


@loss_function
def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """BCE between `sigmoid(input)` and `target`, as `mindspore.mint.nn.functional`'s.

    Args:
      input: logits, a float16, bfloat16 or float32 array of any shape.
      target: a floating array of input's shape.
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean' or 'sum', in any case.
      pos_weight: weight of the positive term, broadcastable to input's shape, or None.

    Returns:
      The loss: input's shape for 'none', else a 0-d array; input's dtype.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import mindspore
      >>> x = np.array([[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]], np.float32)
      >>> y = np.array([[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]], np.float32)
      >>> print(mindspore.binary_cross_entropy_with_logits(x, y, reduction="MEAN"))
      0.34636116
    """
    return _validation.validate(
        logits=True,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
        reduction_name=reduction,
        rules=RULES,
    )


@loss_function
def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """BCE between probabilities `input` and `target`, as `mindspore.mint.nn.functional`'s.

    Args:
      input: probabilities in [0, 1], a float16, bfloat16 or float32 array of any shape.
      target: a floating array of input's shape.
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean' or 'sum', in any case.

    Returns:
      The loss: input's shape for 'none', else a 0-d array; input's dtype.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import mindspore
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> w = np.array([1.0, 2.0, 2.0], np.float32)
      >>> print(mindspore.binary_cross_entropy(p, y, w))
      0.38240483
    """
    return _validation.validate(
        logits=False,
        input=input,
        target=target,
        weight=weight,
        pos_weight=None,
        reduction_name=reduction,
        rules=RULES,
    )


# the classes' forward: MindSpore's checks under the classes' argument names (logits, labels)


@loss_function
def _cell_logits(logits, labels, weight=None, reduction="mean", pos_weight=None):
    """`BCEWithLogitsLoss`'s functional form (the messages name logits and labels)."""
    return _validation.validate(
        logits=True,
        input=logits,
        target=labels,
        weight=weight,
        pos_weight=pos_weight,
        reduction_name=reduction,
        rules=RULES,
        names=("logits", "labels"),
    )


@loss_function
def _cell_probabilities(logits, labels, weight=None, reduction="mean"):
    """`BCELoss`'s functional form (the messages name logits and labels)."""
    return _validation.validate(
        logits=False,
        input=logits,
        target=labels,
        weight=weight,
        pos_weight=None,
        reduction_name=reduction,
        rules=RULES,
        names=("logits", "labels"),
    )


class _Loss(_modules._Loss):
    """A MindSpore flavour's loss class: MindSpore's module type once mindspore is imported."""

    framework = "mindspore"


class BCEWithLogitsLoss(_Loss):
    """`mindspore.nn.BCEWithLogitsLoss`: reduction first, called as loss(logits, labels).

    The math is that of `bceloss.BCEWithLogitsLoss`; the checks those of this module.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import mindspore
      >>> loss = mindspore.BCEWithLogitsLoss("mean", np.ones(3, np.float32))
      >>> x = np.array([[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]], np.float32)
      >>> y = np.array([[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]], np.float32)
      >>> print(loss(x, y))
      0.34636116
    """

    def __init__(self, reduction="mean", weight=None, pos_weight=None):
        _validation.reduction(reduction, RULES)
        self.reduction = reduction
        self.weight = weight
        self.pos_weight = pos_weight

    def _options(self):
        return {"reduction": self.reduction, "weight": self.weight, "pos_weight": self.pos_weight}

    def forward(self, logits, labels):
        """The loss of `logits` against `labels`, with the options held."""
        return _cell_logits(logits, labels, self.weight, self.reduction, self.pos_weight)

    def _bceloss_bind(self, logits, labels):
        return _cell_logits._bceloss_bind(
            logits, labels, self.weight, self.reduction, self.pos_weight
        )


class BCELoss(_Loss):
    """`mindspore.nn.BCELoss` on probabilities, called as loss(logits, labels).

    MindSpore names the probabilities `logits`. The math is that of `bceloss.BCELoss`;
    the checks those of this module.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import mindspore
      >>> loss = mindspore.BCELoss(weight=np.array([1.0, 2.0, 2.0], np.float32))
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> print(loss(p, y))
      0.38240483
    """

    def __init__(self, weight=None, reduction="mean"):
        _validation.reduction(reduction, RULES)
        self.weight = weight
        self.reduction = reduction

    def _options(self):
        return {"weight": self.weight, "reduction": self.reduction}

    def forward(self, logits, labels):
        """The loss of `logits` against `labels`, with the options held."""
        return _cell_probabilities(logits, labels, self.weight, self.reduction)

    def _bceloss_bind(self, logits, labels):
        return _cell_probabilities._bceloss_bind(logits, labels, self.weight, self.reduction)


if "mindspore" in sys.modules:  # the graph twins of the functions, for mindspore.jit
    importlib.import_module("bceloss._mindspore").install_twins(sys.modules[__name__])
