"""Every check of the library and every error message, in one place.

A public function (core or flavour) hands its arguments and its flavour's `Rules` to
`validate`, which checks them in a fixed order and returns the `LossCall` the engine runs.
Messages name the argument, what was expected and what arrived.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import array_api_compat

from bceloss import _dtypes
from bceloss._engine import LossCall

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
    """

    dtypes: tuple[str, ...] = _dtypes.FLOAT_NAMES
    integral_target: bool = True
    same_dtype: bool = False
    reduction_any_case: bool = False
    weight_may_expand: bool = False
    ignore_label: float | None = None


CORE = Rules()


def _type_name(obj) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape)


def namespace(arrays: dict):
    """The array namespace of the named arrays (None values skipped); TypeError otherwise."""
    present = {name: a for name, a in arrays.items() if a is not None}
    for name, a in present.items():
        if not array_api_compat.is_array_api_obj(a) or isinstance(a, (bool, int, float, complex)):
            msg = (
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got {_type_name(a)}"
            )
            raise TypeError(msg)
    kinds = {}
    for name, a in present.items():
        # 'array_api_compat.torch' -> 'torch', 'jax.numpy' -> 'jax', 'array_api_strict'
        library = array_api_compat.array_namespace(a).__name__.removeprefix("array_api_compat.")
        kinds.setdefault(library.split(".")[0], name)
    if len(kinds) > 1:
        (ka, na), (kb, nb) = list(kinds.items())[:2]
        msg = f"all arrays of one call must be of one kind; got {na} from {ka} and {nb} from {kb}"
        raise TypeError(msg)
    return array_api_compat.array_namespace(*present.values())


def reduction(value, rules: Rules = CORE) -> str:
    """The canonical reduction name; TypeError for a non-str, ValueError for an unknown one."""
    if not isinstance(value, str):
        msg = f"reduction must be a str, one of {REDUCTIONS}; got {_type_name(value)}"
        raise TypeError(msg)
    name = value.lower() if rules.reduction_any_case else value
    if name not in REDUCTIONS:
        msg = f"reduction must be one of {REDUCTIONS}; got {value!r}"
        raise ValueError(msg)
    return name


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


def is_concrete(x) -> bool:
    """True where values can be read without tracing or computing a lazy graph."""
    if array_api_compat.is_jax_array(x):
        import jax

        return not isinstance(x, jax.core.Tracer)
    return not array_api_compat.is_dask_array(x)


def _probabilities(xp, x, name: str):
    """`x`, checked to hold probabilities where its values are concrete (see `is_concrete`).

    A Dask array comes back with the check embedded in its graph: it runs chunk by chunk
    as the loss is computed, and the error names the range found in the offending chunk.
    """
    if array_api_compat.is_dask_array(x):
        return x.map_blocks(functools.partial(_checked_block, name=name), dtype=x.dtype)
    if not is_concrete(x) or math.prod(_shape(x)) == 0:
        return x
    # NaN compares False both ways: it passes and propagates to the loss.
    outside = (x < 0) | (x > 1)
    if bool(xp.any(outside)):
        # the range of the offending values only: the others are filled with +-inf
        low = float(xp.min(xp.where(outside, x, xp.full_like(x, math.inf))))
        high = float(xp.max(xp.where(outside, x, xp.full_like(x, -math.inf))))
        msg = f"{name} must hold probabilities in [0, 1]; got values from {low:g} to {high:g}"
        raise ValueError(msg)
    return x


def _checked_block(block, name: str):
    return _probabilities(array_api_compat.array_namespace(block), block, name)


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
) -> LossCall:
    """Check one call of a loss function and return what the engine runs."""
    iname, tname = names
    xp = namespace({iname: input, tname: target, "weight": weight, "pos_weight": pos_weight})
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
    if not logits:
        input = _probabilities(xp, input, iname)
    return LossCall(
        xp=xp,
        logits=logits,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
        reduction=red,
        dtype=dtype,
        shape=out_shape,
        ignore_label=rules.ignore_label if logits else None,
    )
