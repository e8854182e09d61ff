"""The kernels' helper threads in a forked process: plain Python threads on a queue.

Once a process has run an OpenMP region, numba terminates a process forked from it on the
child's first region (GNU OpenMP, numba's layer here, is not fork-safe): a PyTorch
DataLoader's workers, a `multiprocessing` pool. There a parallel kernel call puts its work
on the queue for `team - 1` helpers and starts on it itself; whoever is free takes the next
chunk of blocks from a shared counter. The caller waits only for chunks a helper has taken,
never for a helper that has not started, and a waiting helper sleeps (no spinning). Waking
one costs 15 to 20 us more than OpenMP's spinning threads, and far more right after
PyTorch's own parallel ops (their threads spin on the cores a woken helper needs): so the
process that imported bceloss keeps OpenMP.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings

_lock = threading.Lock()
_queue: queue.SimpleQueue | None = None
_started = 0  # helper threads serving _queue
_pid = None  # the process that started them (a forked child has none running)
_warned = False


def submit(count: int, fn, args: tuple) -> list:
    """Queue `fn(*args)` for `count` helpers, starting helper threads as needed. Returns
    the box holding `args`: the caller empties it once done, so that work still queued
    does not keep its arrays alive (a helper then finds nothing to run)."""
    if _pid != os.getpid() or _started < count:
        _start(count)
    box = [args]
    for _ in range(count):
        _queue.put((fn, box))
    return box


def _start(count: int) -> None:
    global _queue, _started, _pid
    with _lock:
        if _pid != os.getpid():  # first use, or a forked child: the parent's helpers are gone
            _queue, _started, _pid = queue.SimpleQueue(), 0, os.getpid()
        while _started < count:
            helper = threading.Thread(target=_serve, args=(_queue,), daemon=True)
            helper.name = "bceloss-helper"
            helper.start()
            _started += 1


def _reset_after_fork() -> None:
    # the child has no helper threads, and `_lock` may have been held by a thread of the
    # parent that the child does not have
    global _lock, _queue, _started, _pid
    _lock, _queue, _started, _pid = threading.Lock(), None, 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _serve(work: queue.SimpleQueue) -> None:
    global _warned
    while True:
        fn, box = work.get()
        args = box[:1]  # (empty once the caller is done)
        try:
            if args:
                fn(*args[0])
        except Exception as exc:  # noqa: BLE001
            # The caller computes every chunk no helper has taken: a helper that fails
            # before taking one loses nothing (the kernels raise nothing once they have one).
            if not _warned:
                _warned = True
                warnings.warn(f"a bceloss helper thread failed: {exc!r}", stacklevel=1)
        del fn, box, args  # the arrays are not held while waiting for the next call
