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
- `sigmoid_focal_loss` applies alpha always (no "alpha < 0 turns it off" as in torchvision),
  sums by default, and divides the loss by `normalizer` (float32 or float64, at most one
  dimension) before reducing; the label -100 is ignored as in the BCE with logits.

The numbers are the core's; see `bceloss.BCEWithLogitsLoss` and `bceloss.BCELoss`.

Every function and class takes NumPy, PyTorch, JAX, CuPy and Dask arrays, and Paddle's own
CPU tensors: a paddle.Tensor result, recorded by Paddle's autograd (`loss.backward()`), and
the classes are `paddle.nn.Layer`s once paddle is imported (see `bceloss._paddle`).
"""

from __future__ import annotations

from bceloss import _dispatch, _modules, _validation
from bceloss._functional import loss_function

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
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


@loss_function
def sigmoid_focal_loss(
    logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction="sum", name=None
):
    """The sigmoid focal loss, as `paddle.nn.functional.sigmoid_focal_loss`.

    l = a_t (1 - p_t)^gamma ce / normalizer, a_t = alpha y + (1 - alpha)(1 - y), computed as
    `bceloss.sigmoid_focal_loss` (without cancellation) with the loss multiplied by
    1 / normalizer (within an ulp of Paddle's division). alpha is always applied.

    Args:
      logit: a float32 or float64 array of any shape.
      label: an array of logit's shape and dtype, in [0, 1]; -100 marks an element to ignore.
      normalizer: None, or a float32 or float64 array of zero or one dimension that
        broadcasts to logit's shape (usually the number of positives, shape (1,)).
      alpha: the weight of the positives, a finite number.
      gamma: the focusing exponent, a finite number >= 0.
      reduction: 'none', 'mean' or 'sum'.
      name: ignored.

    Returns:
      The loss: logit's shape for 'none', else a 0-d array; logit's dtype.

    Examples:
      >>> import numpy as np
      >>> from bceloss.compat import paddle
      >>> logit = np.array([[0.97, 0.91, 0.03], [0.55, 0.43, 0.71]], np.float32)
      >>> label = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
      >>> print(paddle.sigmoid_focal_loss(logit, label, normalizer=np.array([2.0], np.float32)))
      0.65782464
    """
    focal = _validation.focal_options(alpha, gamma, negative_alpha_is_off=False)
    weight = None
    if normalizer is not None:
        xp = _validation.namespace({"logit": logit, "normalizer": normalizer})
        _validation.normalizer(xp, normalizer, tuple(logit.shape))
        # a 0-d array where the library would give a scalar (NumPy)
        weight = _dispatch.backend(xp).as_result(xp, 1 / normalizer)
    return _validation.validate(
        logits=True,
        input=logit,
        target=label,
        weight=weight,
        pos_weight=None,
        reduction_name=reduction,
        rules=RULES,
        names=("logit", "label"),
        focal=focal,
    )


class _Loss(_modules._Loss):
    """A Paddle flavour's loss class: Paddle's module type once paddle is imported."""

    framework = "paddle"


class BCEWithLogitsLoss(_Loss):
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

    def forward(self, logit, label):
        """The loss of `logit` against `label`, with the options held."""
        return binary_cross_entropy_with_logits(
            logit, label, self.weight, self.reduction, self.pos_weight, self.name
        )

    def _bceloss_bind(self, logit, label):
        return binary_cross_entropy_with_logits._bceloss_bind(
            logit, label, self.weight, self.reduction, self.pos_weight
        )


class BCELoss(_Loss):
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

    def forward(self, input, label):
        """The loss of `input` against `label`, with the options held."""
        return binary_cross_entropy(input, label, self.weight, self.reduction, self.name)

    def _bceloss_bind(self, input, label):
        return binary_cross_entropy._bceloss_bind(input, label, self.weight, self.reduction)
