"""How many threads the fused kernels use: `BCELOSS_NUM_THREADS`, else every core this
process may run on; `set_num_threads` changes it for the process (every Python thread)."""

from __future__ import annotations

import operator
import os

from bceloss._kernels._native import set_threads as _native_threads

# Each thread past the first is a helper that lives as long as the process: a bound keeps a
# typo (10000 for 100) from starting thousands of them
MAX_THREADS = 1024


def _available() -> int:
    if hasattr(os, "sched_getaffinity"):
        return min(MAX_THREADS, max(1, len(os.sched_getaffinity(0))))
    return min(MAX_THREADS, os.cpu_count() or 1)


def _from_environment() -> int:
    value = os.environ.get("BCELOSS_NUM_THREADS", "").strip()
    if not value:
        return _available()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_THREADS:
        msg = f"BCELOSS_NUM_THREADS must be an integer from 1 to {MAX_THREADS}; got {value!r}"
        raise ValueError(msg)
    return count


_count: int | None = None


def get_num_threads() -> int:
    """The number of threads a large kernel call runs on (the calling thread included)."""
    global _count
    if _count is None:
        _count = _from_environment()
    return _count


def set_num_threads(count: int) -> None:
    """Run large kernel calls on `count` threads (the calling thread included, at most
    MAX_THREADS), from now on, in this process; the environment variable BCELOSS_NUM_THREADS
    sets it at start-up."""
    global _count
    if isinstance(count, bool):
        msg = "count must be an int; got bool"
        raise TypeError(msg)
    try:
        count = operator.index(count)  # an int, a NumPy integer
    except TypeError:
        msg = f"count must be an int; got {type(count).__name__}"
        raise TypeError(msg) from None
    if not 1 <= count <= MAX_THREADS:
        msg = f"count must be from 1 to {MAX_THREADS}; got {count}"
        raise ValueError(msg)
    _count = count
    _native_threads(count)  # the count of the PyTorch operator's C kernel
