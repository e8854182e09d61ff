"""Dtype classification, promotion and the dtypes the math runs in.

bfloat16 is not an array API dtype (NumPy gets it from ml_dtypes) and ``isdtype``
refuses it, so every dtype question of the library goes through this module.
"""

from __future__ import annotations

import numpy as np

FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
HALF_NAMES = ("float16", "bfloat16")


def dtype_name(dtype) -> str:
    """The short name of a dtype of any namespace: 'float32', 'bfloat16', 'int64'..."""
    # str() of a dtype costs microseconds: remembered, by the dtype's type too (dtypes of
    # different libraries may hash alike, and array_api_strict warns when compared to NumPy's)
    key = (type(dtype), dtype)
    name = _NAMES.get(key)
    if name is None:
        name = str(dtype) if isinstance(dtype, np.dtype) else str(dtype).rsplit(".", 1)[-1]
        _NAMES[key] = name
    return name


_NAMES: dict = {}


def is_floating(xp, dtype) -> bool:
    """True for the four floating dtypes the library computes in."""
    return dtype_name(dtype) in FLOAT_NAMES


def is_integral(xp, dtype) -> bool:
    """True for integer and bool dtypes (accepted as targets and weights)."""
    if dtype_name(dtype) == "bfloat16":
        return False
    return xp.isdtype(dtype, ("integral", "bool"))


def compute_dtype(xp, dtype):
    """The dtype the elementwise math runs in: float32 for the half types, else dtype."""
    return xp.float32 if dtype_name(dtype) in HALF_NAMES else dtype


def promote(xp, a, b):
    """Array API promotion of two floating dtypes, with float16 + bfloat16 -> float32."""
    if dtype_name(a) == dtype_name(b):
        return a
    names = {dtype_name(a), dtype_name(b)}
    if "float64" in names:
        return xp.float64
    return xp.float32
