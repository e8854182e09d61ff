"""The core loss functions, with PyTorch's names, argument order and semantics."""

from __future__ import annotations

from bceloss import _validation
from bceloss._engine import loss_function


@loss_function
def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy between probabilities `input` and `target`.

    The math, the shapes and the errors are those of `BCELoss`, which see.

    Args:
      input: probabilities in [0, 1], a floating array of any shape.
      target: an array of input's shape (integer and bool targets are cast).
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean' or 'sum'.

    Returns:
      The loss: input's shape for 'none', else a 0-d array; input's dtype.

    Examples:
      >>> import numpy as np, bceloss
      >>> p = np.array([0.2, 0.7, 0.1], np.float32)
      >>> y = np.array([0.0, 1.0, 0.0], np.float32)
      >>> w = np.array([1.0, 2.0, 2.0], np.float32)
      >>> print(bceloss.binary_cross_entropy(p, y, w))  # exact 0.382404837; Paddle prints ...486
      0.38240483
    """
    return _validation.validate(
        logits=False,
        input=input,
        target=target,
        weight=weight,
        pos_weight=None,
        reduction_name=reduction,
    )


@loss_function
def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Binary cross-entropy between `sigmoid(input)` and `target`, computed from logits.

    The math, the shapes and the errors are those of `BCEWithLogitsLoss`, which see.

    Args:
      input: logits, a floating array of any shape.
      target: an array of input's shape, usually in [0, 1] (integer and bool are cast).
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean' or 'sum'.
      pos_weight: weight of the positive term, broadcastable to input's shape, or None.

    Returns:
      The loss: input's shape for 'none', else a 0-d array; input's dtype.

    Examples:
      >>> import numpy as np, bceloss
      >>> x = np.array([5.0, 1.0, 3.0], np.float32)
      >>> y = np.array([1.0, 0.0, 1.0], np.float32)
      >>> print(bceloss.binary_cross_entropy_with_logits(x, y))  # exact 0.4561881292
      0.4561881
    """
    return _validation.validate(
        logits=True,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
        reduction_name=reduction,
    )
