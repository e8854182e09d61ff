"""Every check of the library and every error message, in one place.

A public function (core or flavour) hands its arguments and its flavour's `Rules` to
`validate`, which checks them in a fixed order and returns the `LossCall` the engine runs.
Messages name the argument, what was expected and what arrived.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import array_api_compat

from bceloss import _dispatch, _dtypes
from bceloss._call import LossCall

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Rules:
    """What a flavour accepts beyond the shared checks.

    Attributes:
      dtypes: names of the floating dtypes the input may have.
      integral_target: cast an integer or bool target to the input's dtype (else TypeError).
      same_dtype: input and target dtypes must match (else ValueError); otherwise promote.
      reduction_any_case: accept 'MEAN' as 'mean'.
      weight_may_expand: weight may broadcast to a shape larger than the input's.
      ignore_label: a target value whose elements give loss 0 and gradient 0 (logits form).
      reductions: the reduction names accepted.
    """

    dtypes: tuple[str, ...] = _dtypes.FLOAT_NAMES
    integral_target: bool = True
    same_dtype: bool = False
    reduction_any_case: bool = False
    weight_may_expand: bool = False
    ignore_label: float | None = None
    reductions: tuple[str, ...] = REDUCTIONS


CORE = Rules(reductions=(*REDUCTIONS, "weighted_mean"))

# The focal loss's largest gamma: both paths are held to each other and free of NaN up to it
# (m^gamma of any m <= 0.8 is below float64's smallest subnormal number long before); a
# larger gamma would overflow in float32 inside the kernel.
GAMMA_MAX = 100.0


_type_name = _dispatch.type_name


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape)


def namespace(arrays: dict):
    """The array namespace of the named arrays (None values skipped); TypeError otherwise."""
    return _dispatch.namespace(arrays)


def reduction(value, rules: Rules = CORE) -> str:
    """The canonical reduction name; TypeError for a non-str, ValueError for an unknown one."""
    if not isinstance(value, str):
        msg = f"reduction must be a str, one of {rules.reductions}; got {_type_name(value)}"
        raise TypeError(msg)
    name = value.lower() if rules.reduction_any_case else value
    if name not in rules.reductions:
        msg = f"reduction must be one of {rules.reductions}; got {value!r}"
        raise ValueError(msg)
    return name


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a real number; got {_type_name(value)}"
        raise TypeError(msg)
    return float(value)


def smoothing(value) -> float:
    """The label smoothing s as a float; TypeError for a non-number, ValueError outside [0, 1]."""
    s = _real(value, "label_smoothing")
    if not 0 <= s <= 1:
        msg = f"label_smoothing must be in [0, 1]; got {value!r}"
        raise ValueError(msg)
    return s


def focal_options(
    alpha, gamma, *, negative_alpha_is_off: bool = True
) -> tuple[float | None, float]:
    """The focal loss's (alpha, gamma): alpha None when off (torchvision: alpha < 0).

    TypeError for a non-number; ValueError for a non-finite alpha or a gamma outside
    [0, GAMMA_MAX].
    """
    a, g = _real(alpha, "alpha"), _real(gamma, "gamma")
    if not math.isfinite(a):
        msg = f"alpha must be a finite number; got {alpha!r}"
        raise ValueError(msg)
    if not (math.isfinite(g) and g >= 0):
        msg = f"gamma must be a finite number >= 0; got {gamma!r}"
        raise ValueError(msg)
    if g > GAMMA_MAX:
        msg = f"gamma must be at most {GAMMA_MAX:g} (the focal loss's limit); got {gamma!r}"
        raise ValueError(msg)
    return (None if a < 0 and negative_alpha_is_off else a), g


def normalizer(xp, a, shape) -> None:
    """Paddle's focal loss `normalizer`: float32 or float64, at most one dimension, and
    broadcastable to the logit's shape."""
    dtype = _dtypes.dtype_name(a.dtype)
    if dtype not in ("float32", "float64"):
        msg = f"normalizer must have one of the dtypes float32, float64; got {dtype}"
        raise TypeError(msg)
    if a.ndim > 1:
        msg = f"normalizer must have zero or one dimension; got shape {_shape(a)}"
        raise ValueError(msg)
    _broadcast_to_input(a, "normalizer", shape, may_expand=False)


def _mask(where, shape) -> None:
    dtype = _dtypes.dtype_name(where.dtype)
    if dtype != "bool":
        msg = f"where must have a bool dtype; got {dtype}"
        raise TypeError(msg)
    _broadcast_to_input(where, "where", shape, may_expand=False)


def _floating_input(xp, x, name: str, rules: Rules) -> None:
    dtype = _dtypes.dtype_name(x.dtype)
    if not _dtypes.is_floating(xp, x.dtype):
        msg = f"{name} must have a floating dtype ({', '.join(rules.dtypes)}); got {dtype}"
        raise TypeError(msg)
    if dtype not in rules.dtypes:
        msg = f"{name} must have one of the dtypes {', '.join(rules.dtypes)}; got {dtype}"
        raise TypeError(msg)


def _target_dtype(xp, input, target, names, rules: Rules):
    """The result dtype, from the input's and the target's dtypes."""
    iname, tname = names
    if _dtypes.is_floating(xp, target.dtype):
        if rules.same_dtype and _dtypes.dtype_name(target.dtype) != _dtypes.dtype_name(input.dtype):
            msg = (
                f"{tname} must have the dtype of {iname} "
                f"({_dtypes.dtype_name(input.dtype)}); got {_dtypes.dtype_name(target.dtype)}"
            )
            raise ValueError(msg)
        if _dtypes.dtype_name(target.dtype) not in rules.dtypes:
            msg = (
                f"{tname} must have one of the dtypes {', '.join(rules.dtypes)}; "
                f"got {_dtypes.dtype_name(target.dtype)}"
            )
            raise TypeError(msg)
        return _dtypes.promote(xp, input.dtype, target.dtype)
    if rules.integral_target and _dtypes.is_integral(xp, target.dtype):
        return input.dtype
    expected = "a floating or integer dtype" if rules.integral_target else "a floating dtype"
    msg = f"{tname} must have {expected}; got {_dtypes.dtype_name(target.dtype)}"
    raise TypeError(msg)


def _numeric(xp, a, name: str) -> None:
    if not (_dtypes.is_floating(xp, a.dtype) or _dtypes.is_integral(xp, a.dtype)):
        msg = f"{name} must have a real numeric dtype; got {_dtypes.dtype_name(a.dtype)}"
        raise TypeError(msg)


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy's broadcast of two shapes, or None when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


def _broadcast_to_input(a, name: str, shape, may_expand: bool):
    """The output shape with `a` broadcast against the input's `shape`."""
    joint = broadcast_shape(_shape(a), shape)
    if joint is None or (joint != shape and not may_expand):
        msg = f"{name} must broadcast to input shape {shape}; got shape {_shape(a)}"
        raise ValueError(msg)
    return joint


def probabilities_in_range(xp, values, name: str) -> None:
    """ValueError when `values` (concrete) hold anything outside [0, 1]; NaN passes (it
    compares False both ways) and propagates to the loss."""
    outside = (values < 0) | (values > 1)
    if bool(xp.any(outside)):
        # the range of the offending values only: the others are filled with +-inf
        low = float(xp.min(xp.where(outside, values, xp.full_like(values, math.inf))))
        high = float(xp.max(xp.where(outside, values, xp.full_like(values, -math.inf))))
        msg = f"{name} must hold probabilities in [0, 1]; got values from {low:g} to {high:g}"
        raise ValueError(msg)


def validate(
    *,
    logits: bool,
    input,
    target,
    weight,
    pos_weight,
    reduction_name,
    rules: Rules = CORE,
    names: tuple[str, str] = ("input", "target"),
    where=None,
    label_smoothing=0.0,
    focal: tuple[float | None, float] | None = None,
) -> LossCall:
    """Check one call of a loss function and return what the engine runs.

    `focal` is the (alpha, gamma) of the sigmoid focal loss (from `focal_options`), None for
    BCE.
    """
    iname, tname = names
    for name, a in ((iname, input), (tname, target)):
        if a is None:
            msg = f"{name} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got None"
            raise TypeError(msg)
    arrays = {iname: input, tname: target, "weight": weight, "pos_weight": pos_weight}
    xp = _dispatch.namespace({**arrays, "where": where})
    backend = _dispatch.backend(xp)
    # non-native byte order (NumPy): converted once, so that it never changes the answer
    # or the path taken (the kernels read native numbers only)
    input, target, weight, pos_weight = (
        backend.native(a) for a in (input, target, weight, pos_weight)
    )
    red = reduction(reduction_name, rules)
    _floating_input(xp, input, iname, rules)
    dtype = _target_dtype(xp, input, target, names, rules)
    shape = _shape(input)
    if _shape(target) != shape:
        msg = f"{tname} must have the shape of {iname} {shape}; got shape {_shape(target)}"
        raise ValueError(msg)
    out_shape = shape
    if weight is not None:
        _numeric(xp, weight, "weight")
        out_shape = _broadcast_to_input(weight, "weight", shape, rules.weight_may_expand)
    if pos_weight is not None:
        _numeric(xp, pos_weight, "pos_weight")
        _broadcast_to_input(pos_weight, "pos_weight", shape, may_expand=False)
    if where is not None:
        _mask(where, shape)
    label_smoothing = smoothing(label_smoothing)
    if not logits and where is None:
        # an array whose values cannot be read yet (Dask) comes back with the check inside
        input = backend.checked_probabilities(xp, input, iname)
    elif not logits:
        # masked-out elements may hold anything (padding): only the kept ones are checked
        kept = xp.where(xp.broadcast_to(where, shape), input, xp.ones_like(input) / 2)
        checked = backend.checked_probabilities(xp, kept, iname)
        input = input if checked is kept else checked  # Dask: checked lazily, in the graph
    alpha, gamma = (None, None) if focal is None else focal
    return LossCall(
        xp=xp,
        backend=backend,
        logits=logits,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
        reduction=red,
        dtype=dtype,
        shape=out_shape,
        ignore_label=rules.ignore_label if logits else None,
        where=where,
        label_smoothing=label_smoothing,
        gamma=gamma,
        alpha=alpha,
    )


def loss_bind(fn):
    """The bind function of a loss of the library (`_bceloss_bind`); TypeError otherwise."""
    bind = getattr(fn, "_bceloss_bind", None)
    if bind is None:
        msg = f"fn must be a loss function of bceloss; got {fn!r}"
        raise TypeError(msg)
    return bind


def argnums(value) -> tuple[int, ...]:
    """value_and_grad's argnums as a tuple of positions (0 input, 1 target)."""
    wrt = (value,) if isinstance(value, int) else value
    if (
        not isinstance(wrt, tuple)
        or not wrt
        or any(isinstance(i, bool) or i not in (0, 1) for i in wrt)
        or len(set(wrt)) != len(wrt)
    ):
        msg = f"argnums must be 0, 1 or a tuple of distinct ones of them; got {value!r}"
        raise TypeError(msg)
    return wrt


def scalar_loss(call: LossCall) -> None:
    """value_and_grad differentiates a scalar: reduction 'none' is a ValueError."""
    if call.reduction == "none":
        msg = "value_and_grad needs a scalar loss: reduction must be 'mean' or 'sum'; got 'none'"
        raise ValueError(msg)


def gradient_out(out, call: LossCall, wrt: tuple[int, ...]) -> None:
    """Check `out=` of value_and_grad: where d loss / d input is written."""
    if 0 not in wrt:
        msg = f"out receives d loss / d input: argnums must include 0; got {wrt!r}"
        raise ValueError(msg)
    xp = call.xp
    if (
        not call.backend.writable_out
        or not array_api_compat.is_array_api_obj(out)
        or array_api_compat.array_namespace(out) is not xp
    ):
        msg = (
            "out must be a NumPy array or PyTorch tensor of the kind of input "
            f"({xp.__name__}); got {_type_name(out)}"
        )
        raise TypeError(msg)
    shape = _shape(call.input)
    if _shape(out) != shape:
        msg = f"out must have the shape of input {shape}; got shape {_shape(out)}"
        raise ValueError(msg)
    if _dtypes.dtype_name(out.dtype) != _dtypes.dtype_name(call.input.dtype):
        msg = (
            f"out must have the dtype of input ({_dtypes.dtype_name(call.input.dtype)}); "
            f"got {_dtypes.dtype_name(out.dtype)}"
        )
        raise TypeError(msg)
    if not call.backend.writeable(out):
        msg = "out must be writeable; got a read-only array"
        raise ValueError(msg)
    arrays = (call.input, call.target, call.weight, call.pos_weight, call.where)
    if any(a is not None and call.backend.shares_memory(out, a) for a in arrays):
        msg = "out must not share memory with input, target, weight, pos_weight or where"
        raise ValueError(msg)
