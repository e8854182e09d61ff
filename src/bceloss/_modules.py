"""Loss classes: they hold settings and call the functional form (torch.nn style)."""

from __future__ import annotations

from bceloss import _engine, _functional, _validation


class _Loss:
    """A loss that holds its options; call it as loss(input, target)."""

    def __call__(self, input, target):
        return _engine.loss(self.__bceloss_bind__(input, target))

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self._options().items() if v is not None)
        return f"{type(self).__name__}({options})"


class BCELoss(_Loss):
    """Binary cross-entropy between probabilities and targets.

    For input x in [0, 1], target y, weight w (1 when None), elementwise

        l = -w * (y * max(log(x), -100) + (1 - y) * max(log(1 - x), -100))

    then 'none' keeps l, 'sum' adds it up and 'mean' divides that sum by the number of
    elements (not by the sum of the weights, as in PyTorch). The logs are clamped at -100
    as in PyTorch, so the loss stays finite at x = 0 and x = 1. The gradient is

        d l / d x = w * (x - y) / max(x * (1 - x), 1e-12)
        d l / d y = w * (max(log(1 - x), -100) - max(log(x), -100))

    Shape:
      input: any shape, floating dtype (float16, bfloat16, float32, float64).
      target: input's shape; floating, or integer/bool (cast to input's dtype).
      weight: broadcastable to input's shape.
      result: input's shape for 'none', else 0-d; input's dtype (float16 and bfloat16
      are computed in float32 and rounded once).

    Raises:
      TypeError: an argument that is not an array, a non-floating input, a reduction
        that is not a str.
      ValueError: an unknown reduction, mismatched shapes, input outside [0, 1].

    Examples:
      >>> import numpy as np, bceloss
      >>> loss = bceloss.BCELoss(weight=np.array([1.0, 2.0, 2.0], np.float32))
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> print(loss(p, y))
      0.38240483
    """

    def __init__(self, weight=None, reduction="mean"):
        _validation.reduction(reduction)
        self.weight = weight
        self.reduction = reduction

    def _options(self):
        return {"weight": self.weight, "reduction": self.reduction}

    def __bceloss_bind__(self, input, target):
        return _functional.binary_cross_entropy.__bceloss_bind__(
            input, target, weight=self.weight, reduction=self.reduction
        )


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy between sigmoid(logits) and targets, computed from the logits.

    For logits x, target y, weight w and pos_weight p (1 when None), lw = 1 + (p - 1) y,

        l = w * ((1 - y) * x + lw * softplus(-x))

    evaluated as the cancellation-free (1 - y) max(x, 0) + p y max(-x, 0)
    + lw log1p(exp(-|x|)), accurate to a few ulp for every finite x. Infinite logits give
    their limits: x = +inf gives inf for y < 1 and 0 for y = 1, x = -inf gives inf for
    y > 0 and 0 for y = 0. NaN propagates. Reductions as in `BCELoss`. The gradient is

        d l / d x = w * (lw * sigmoid(x) - p * y)
        d l / d y = w * ((p - 1) * softplus(-x) - x)

    Shape:
      input: any shape, floating dtype (float16, bfloat16, float32, float64).
      target: input's shape; floating (promoted with input), or integer/bool (cast).
      weight, pos_weight: broadcastable to input's shape (a (C,) pos_weight weighs the
        positives of each of C labels in the last dimension).
      result: input's shape for 'none', else 0-d.

    Raises:
      TypeError: an argument that is not an array, a non-floating input, a reduction
        that is not a str.
      ValueError: an unknown reduction, mismatched shapes.

    Examples:
      >>> import numpy as np, bceloss
      >>> loss = bceloss.BCEWithLogitsLoss(pos_weight=np.array([1.0, 2.0], np.float32))
      >>> x = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
      >>> y = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)
      >>> print(loss(x, y))
      1.6534557
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        _validation.reduction(reduction)
        self.weight = weight
        self.reduction = reduction
        self.pos_weight = pos_weight

    def _options(self):
        return {"weight": self.weight, "reduction": self.reduction, "pos_weight": self.pos_weight}

    def __bceloss_bind__(self, input, target):
        return _functional.binary_cross_entropy_with_logits.__bceloss_bind__(
            input, target, weight=self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )
