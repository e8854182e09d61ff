"""The core loss functions, with PyTorch's names, argument order and semantics."""

from __future__ import annotations

import functools
import inspect

from bceloss import (
    _array_api,  # noqa: F401  (NumPy's express lane, from the first call)
    _call,
    _dispatch,
    _validation,
)


def loss_function(bind):
    """Turn `bind`, which checks a call's arguments into a LossCall, into a loss function (of
    the core or of a flavour), with bind's name, signature and docstring.

    The loss runs the validated call (`_call.run`), with three routes at the edge. The express
    lane of the first argument's library (`_dispatch.EXPRESS_LANES`: NumPy's, PyTorch's)
    takes a call whose arguments all have a form (`_memo`), validated once a form. A
    framework whose tensors the core reads as NumPy views takes the call next
    (`_dispatch.edge_adapter`). Inside a graph that PyTorch is compiling (`torch.compile`,
    `torch.export`) a core loss is one registered operator (`_dispatch.compiled_loss`): the
    compiler never reads the validation's Python, which runs in the operator instead; a
    flavour runs outside the graph. `value_and_grad` finds bind again through the
    `_bceloss_bind` attribute.
    """
    signature = inspect.signature(bind)
    positional = tuple(  # the parameters a positional argument binds to
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    # Python's words for too many positional arguments (its "takes from 2 to 5")
    required = sum(signature.parameters[n].default is inspect.Parameter.empty for n in positional)
    takes = f"{required} to {len(positional)}" if required < len(positional) else required
    takes = f"{bind.__name__}() takes {'from ' if required < len(positional) else ''}{takes}"
    name = f"{bind.__module__}.{bind.__name__}"  # the operator finds `bind` again by it
    traced = bind.__module__ == __name__  # the core's losses: the flavours are not operators

    @functools.wraps(bind)
    def loss(*args, **kwargs):
        if _dispatch.torch_compiling():
            if traced:
                if len(args) > len(positional):
                    msg = f"{takes} positional arguments but {len(args)} were given"
                    raise TypeError(msg)
                for twice in positional[: len(args)]:  # (as Python binds them)
                    if twice in kwargs:
                        msg = f"{bind.__name__}() got multiple values for argument {twice!r}"
                        raise TypeError(msg)
                # (a comprehension: the compiler reads no Python of its own for it)
                bound = {key: a for key, a in zip(positional, args, strict=False)}
                bound.update(kwargs)
                done = _dispatch.compiled_loss(name, bound)
                if done is None:  # (PyTorch's adapter not registered: imported here)
                    from bceloss import _torch

                    done = _torch.compiled_loss(name, bound)
                return done
            from bceloss import _torch

            # a flavour runs eagerly, outside the graph: a graph break (which
            # fullgraph=True refuses, naming the reason)
            return _torch.flavour_outside_graph(eager, args, kwargs)
        return eager(*args, **kwargs)

    def eager(*args, **kwargs):
        lane = _dispatch.EXPRESS_LANES.get(type(args[0])) if args else None
        if lane is not None:
            result = lane(bind, args, kwargs)
            if result is not None:
                return result
        edge = _dispatch.edge_adapter(args, kwargs)
        if edge is not None:
            return edge.loss(bind, args, kwargs)
        return _call.run(bind(*args, **kwargs))

    loss._bceloss_bind = bind
    loss._bceloss_name = name
    return loss


@loss_function
def binary_cross_entropy(
    input, target, weight=None, reduction="mean", *, label_smoothing=0.0, where=None
):
    """Binary cross-entropy between probabilities `input` and `target`.

    The math, the shapes and the errors are those of `BCELoss`, which see.

    Args:
      input: probabilities in [0, 1], a floating array of any shape.
      target: an array of input's shape (integer and bool targets are cast).
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean', 'sum' or 'weighted_mean'.
      label_smoothing: s in [0, 1]; the target becomes y (1 - s) + s / 2.
      where: a bool array broadcastable to input's shape: the elements that count.

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
        where=where,
        label_smoothing=label_smoothing,
    )


@loss_function
def binary_cross_entropy_with_logits(
    input,
    target,
    weight=None,
    reduction="mean",
    pos_weight=None,
    *,
    label_smoothing=0.0,
    where=None,
):
    """Binary cross-entropy between `sigmoid(input)` and `target`, computed from logits.

    The math, the shapes and the errors are those of `BCEWithLogitsLoss`, which see.

    Args:
      input: logits, a floating array of any shape.
      target: an array of input's shape, usually in [0, 1] (integer and bool are cast).
      weight: an array broadcastable to input's shape, or None.
      reduction: 'none', 'mean', 'sum' or 'weighted_mean'.
      pos_weight: weight of the positive term, broadcastable to input's shape, or None.
      label_smoothing: s in [0, 1]; the target becomes y (1 - s) + s / 2.
      where: a bool array broadcastable to input's shape: the elements that count.

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
        where=where,
        label_smoothing=label_smoothing,
    )


@loss_function
def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="none", *, where=None):
    """The sigmoid focal loss of RetinaNet, with torchvision's semantics.

    For logits x and targets y, with p = sigmoid(x), p_t = p y + (1 - p)(1 - y),
    a_t = alpha y + (1 - alpha)(1 - y) and ce the BCE with logits,

        l = a_t (1 - p_t)^gamma ce

    and a_t = 1 when alpha < 0 (torchvision's "-1 for ignore"). gamma = 0 with alpha < 0 is
    BCE with logits, in value and gradient. 1 - p_t is evaluated as
    y sigmoid(-x) + (1 - y) sigmoid(x), without the cancellation of torchvision's
    1 - p_t (which rounds to 0 from |x| = 17 in float32: a loss of 0 at x = 20, y = 1,
    where it is 2.19e-27): every element is within a few ulp of the exact loss for |x| <= 1e4, and
    infinite logits give their limits. The gradients are in closed form (see `_formulas`).

    Args:
      input: logits, a floating array of any shape.
      target: an array of input's shape, in [0, 1] (integer and bool are cast); an element
        outside [0, 1] gives NaN (loss and gradients), where 1 - p_t may be negative.
      alpha: the weight of the positives in (0, 1); < 0 turns it off.
      gamma: the focusing exponent, a number in [0, 100].
      reduction: 'none', 'mean', 'sum' or 'weighted_mean' (no weight: equal to 'mean').
      where: a bool array broadcastable to input's shape: the elements that count.

    Returns:
      The loss: input's shape for 'none', else a 0-d array; input's dtype.

    Raises:
      TypeError: as `binary_cross_entropy_with_logits`, and alpha or gamma not a number.
      ValueError: as `binary_cross_entropy_with_logits`, a non-finite alpha, gamma < 0 or
        above 100.

    Examples:
      >>> import numpy as np, bceloss
      >>> x = np.array([20.0, -1.0, 0.5], np.float32)
      >>> y = np.array([1.0, 0.0, 1.0], np.float32)
      >>> print(bceloss.sigmoid_focal_loss(x, y))  # torchvision gives 0 for the first
      [2.1891279e-27 1.6993543e-02 1.6893374e-02]

    References:
      Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV 2017.
    """
    return _validation.validate(
        logits=True,
        input=input,
        target=target,
        weight=None,
        pos_weight=None,
        reduction_name=reduction,
        where=where,
        focal=_validation.focal_options(alpha, gamma),
    )
