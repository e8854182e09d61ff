"""Fixtures: one Backend enum drives the array libraries every backend test runs on.

`backend` runs a test once per library (numpy, array-api-strict, torch, jax, dask),
skipping with a reason where the library is not installed; `xp` is its array namespace;
`typed` runs it once per (library, dtype) the library supports. JAX runs with 64-bit
types enabled for the test (a context, not a global switch), so float64 means float64.

Hypothesis draws the same examples on every run (seeded by each test), so that a failure is
reproducible and a run, CI's included, cannot fail on an example no other run draws.
`python -m pytest --hypothesis-profile=explore` draws new random examples instead.

A test (or parametrization) that takes more than a few seconds, over about 2 s, is marked
`@pytest.mark.slow`: `python -m pytest -m "not slow"` is the fast lane for
contributors, and `python -m pytest` (CI) still runs everything.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util

# MindSpore first: in one process `import paddle` before `import mindspore` breaks MindSpore
# (undefined symbol dnnl_threadpool_interop_stream_create); the other order works. Importing
# the adapter also spends MindSpore 2.10's one failed NumPy 2 initialization on a harmless
# op (`bceloss._mindspore._warm_up`), so no test's first op meets it.
if importlib.util.find_spec("mindspore") is not None:
    import mindspore  # noqa: F401

    import bceloss._mindspore  # noqa: F401

import array_api_compat
import ml_dtypes
import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("reproducible", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("reproducible")

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")


class Backend(enum.Enum):
    """An array library: its module and the floating dtypes it offers."""

    NUMPY = ("numpy", "numpy", ALL_DTYPES)
    ARRAY_API_STRICT = ("array_api_strict", "array_api_strict", ("float32", "float64"))
    TORCH = ("torch", "torch", ALL_DTYPES)
    JAX = ("jax", "jax.numpy", ALL_DTYPES)
    DASK = ("dask", "dask.array", ALL_DTYPES)

    def __init__(self, label, modname, dtypes):
        self.label = label
        self.modname = modname
        self.dtypes = dtypes

    def __str__(self):
        return self.label

    def module(self):
        """The library's module, or a skip naming what is missing."""
        return pytest.importorskip(self.modname, reason=f"{self.modname} is not installed")

    def dtype(self, name: str):
        """The library's dtype object for a dtype name ('bfloat16' included)."""
        if self in (Backend.NUMPY, Backend.DASK):
            return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
        return getattr(self.module(), name)

    def asarray(self, a, dtype: str = "float64", *, chunks=3):
        """A NumPy array (or nested list) as this library's array of dtype `dtype`."""
        a = np.asarray(a)
        if a.dtype.kind == "f":  # through float64: torch cannot read ml_dtypes.bfloat16
            a = a.astype(np.float64)
        mod = self.module()
        if self is Backend.NUMPY:
            return a.astype(self.dtype(dtype)) if a.dtype.kind == "f" else a
        if self is Backend.DASK:
            arr = mod.from_array(a, chunks=chunks)
            return arr.astype(self.dtype(dtype)) if a.dtype.kind == "f" else arr
        if self is Backend.TORCH:
            t = mod.asarray(a)
            return t.to(self.dtype(dtype)) if a.dtype.kind == "f" else t
        return mod.asarray(a, dtype=self.dtype(dtype)) if a.dtype.kind == "f" else mod.asarray(a)

    @staticmethod
    def to_numpy(a) -> np.ndarray:
        """Any library's array as a float64 NumPy array (Dask graphs are computed)."""
        if array_api_compat.is_dask_array(a):
            a = a.compute()
        if array_api_compat.is_torch_array(a):
            return a.detach().cpu().double().numpy()
        if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(a)):
            xp = array_api_compat.array_namespace(a)
            return np.from_dlpack(xp.astype(a, xp.float64))
        return np.asarray(a).astype(np.float64)


def _setup(backend: Backend):
    """Library state for one test, undone after it."""
    backend.module()
    if backend is Backend.JAX:
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


@pytest.fixture(params=list(Backend), ids=str)
def backend(request):
    """Each array library in turn (skipped, with the reason, where it is not installed)."""
    with _setup(request.param):
        yield request.param


@pytest.fixture
def xp(backend):
    """The array namespace of `backend` (through array-api-compat)."""
    return array_api_compat.array_namespace(backend.asarray([0.0]))


@pytest.fixture(params=[(b, d) for b in Backend for d in b.dtypes], ids=lambda p: f"{p[0]}-{p[1]}")
def typed(request):
    """Each (library, dtype name) the library supports, in turn."""
    b, dtype = request.param
    with _setup(b):
        yield b, dtype
