"""The Paddle flavour: `paddle.nn.functional` and `paddle.nn` names and checks over the core.

Paddle's rules, as measured on PaddlePaddle 3.3.1:

- float32 and float64 only (float16 and bfloat16 are a TypeError); the label must be
  floating (integer and bool are a TypeError) and of the input's dtype (else ValueError).
- `weight` multiplies the elementwise loss after the fact, so it may broadcast to a shape
  larger than the input's and the result takes that shape (a (4, 2, 3) weight on a (2, 3)
  input gives a (4, 2, 3) 'none' loss and a 'mean' over 24 elements); `pos_weight` may not.
- In the logits form an element whose label is -100 gives loss 0 and gradient 0, and
  'mean' still divides by the number of all elements.
- `name` is accepted and ignored (Paddle uses it to name graph nodes).

The numbers are the core's; see `bceloss.BCEWithLogitsLoss` and `bceloss.BCELoss`.
"""

from __future__ import annotations

from bceloss import _engine, _modules, _validation
from bceloss._engine import loss_function

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
]

IGNORE_LABEL = -100.0

RULES = _validation.Rules(
    dtypes=("float32", "float64"),
    integral_target=False,
    same_dtype=True,
    weight_may_expand=True,
    ignore_label=IGNORE_LABEL,
)


@loss_function
def binary_cross_entropy_with_logits(
    logit, label, weight=None, reduction="mean", pos_weight=None, name=None
):
    """BCE between `sigmoid(logit)` and `label`, as `paddle.nn.functional`'s.

    Args:
      logit: a float32 or float64 array of any shape.
      label: an array of logit's shape and dtype; -100 marks an element to ignore.
      weight: an array broadcastable with logit's shape (the result takes the joint shape).
      reduction: 'none', 'mean' or 'sum'.
      pos_weight: weight of the positive term, broadcastable to logit's shape, or None.
      name: ignored.

    Returns:
      The loss: the shape of logit (or of logit and weight broadcast) for 'none', else a
      0-d array; logit's dtype.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import paddle
      >>> x = np.array([5.0, 1.0, 3.0], np.float32)
      >>> y = np.array([1.0, 0.0, 1.0], np.float32)
      >>> print(paddle.binary_cross_entropy_with_logits(x, y))
      0.4561881
    """
    return _validation.validate(
        logits=True,
        input=logit,
        target=label,
        weight=weight,
        pos_weight=pos_weight,
        reduction_name=reduction,
        rules=RULES,
        names=("logit", "label"),
    )


@loss_function
def binary_cross_entropy(input, label, weight=None, reduction="mean", name=None):
    """BCE between probabilities `input` and `label`, as `paddle.nn.functional`'s.

    Args:
      input: probabilities in [0, 1], a float32 or float64 array of any shape.
      label: an array of input's shape and dtype.
      weight: an array broadcastable with input's shape (the result takes the joint shape).
      reduction: 'none', 'mean' or 'sum'.
      name: ignored.

    Returns:
      The loss: the shape of input (or of input and weight broadcast) for 'none', else a
      0-d array; input's dtype.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import paddle
      >>> p = np.array([0.5, 0.6, 0.7], np.float32)
      >>> y = np.array([1.0, 0.0, 1.0], np.float32)
      >>> print(paddle.binary_cross_entropy(p, y))
      0.65537095
    """
    return _validation.validate(
        logits=False,
        input=input,
        target=label,
        weight=weight,
        pos_weight=None,
        reduction_name=reduction,
        rules=RULES,
        names=("input", "label"),
    )


class BCEWithLogitsLoss(_modules._Loss):
    """`paddle.nn.BCEWithLogitsLoss`, called as loss(logit, label).

    The math is that of `bceloss.BCEWithLogitsLoss`; the checks, the weight's broadcasting
    and the ignored label -100 those of this module.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import paddle
      >>> loss = paddle.BCEWithLogitsLoss()
      >>> x = np.array([5.0, 1.0, 3.0], np.float32)
      >>> y = np.array([1.0, 0.0, 1.0], np.float32)
      >>> print(loss(x, y))
      0.4561881
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None, name=None):
        _validation.reduction(reduction, RULES)
        self.weight = weight
        self.reduction = reduction
        self.pos_weight = pos_weight
        self.name = name

    def _options(self):
        return {
            "weight": self.weight,
            "reduction": self.reduction,
            "pos_weight": self.pos_weight,
            "name": self.name,
        }

    def __call__(self, logit, label):
        return _engine.loss(self.__bceloss_bind__(logit, label))

    def __bceloss_bind__(self, logit, label):
        return binary_cross_entropy_with_logits.__bceloss_bind__(
            logit, label, self.weight, self.reduction, self.pos_weight
        )


class BCELoss(_modules._Loss):
    """`paddle.nn.BCELoss` on probabilities, called as loss(input, label).

    The math is that of `bceloss.BCELoss`; the checks and the weight's broadcasting those
    of this module.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import paddle
      >>> loss = paddle.BCELoss(weight=np.array([1.0, 2.0, 2.0], np.float32))
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> print(loss(p, y))
      0.38240483
    """

    def __init__(self, weight=None, reduction="mean", name=None):
        _validation.reduction(reduction, RULES)
        self.weight = weight
        self.reduction = reduction
        self.name = name

    def _options(self):
        return {"weight": self.weight, "reduction": self.reduction, "name": self.name}

    def __call__(self, input, label):
        return _engine.loss(self.__bceloss_bind__(input, label))

    def __bceloss_bind__(self, input, label):
        return binary_cross_entropy.__bceloss_bind__(input, label, self.weight, self.reduction)
