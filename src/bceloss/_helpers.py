"""The kernels' helper threads: plain Python threads that wait on a queue, not OpenMP.

A parallel kernel call puts its work on the queue for `team - 1` helpers and starts on it
itself; whoever is free takes the next chunk of blocks from a shared counter. The caller
waits only for chunks a helper has taken, never for a helper that has not started. So:

- a waiting helper sleeps in the queue (no spinning): other processes get the cores, and a
  helper the system holds up costs the call nothing (with OpenMP the caller waited at the
  join for every thread of the team, a whole scheduler time slice where another process
  kept the cores busy);
- a process forked after a parallel call starts helpers of its own on its first parallel
  call (GNU OpenMP, numba's layer here, is not fork-safe: numba terminated such a child).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

_lock = threading.Lock()
_queue: queue.SimpleQueue | None = None
_started = 0  # helper threads serving _queue
_pid = None  # the process that started them (a forked child has none running)


def submit(count: int, fn, args: tuple) -> None:
    """Queue `fn(*args)` for `count` helpers, starting helper threads as needed."""
    if _pid != os.getpid() or _started < count:
        _start(count)
    for _ in range(count):
        _queue.put((fn, args))


def _start(count: int) -> None:
    global _queue, _started, _pid
    with _lock:
        if _pid != os.getpid():  # first use, or a forked child: the parent's helpers are gone
            _queue, _started, _pid = queue.SimpleQueue(), 0, os.getpid()
        while _started < count:
            threading.Thread(
                target=_serve, args=(_queue,), name="bceloss-helper", daemon=True
            ).start()
            _started += 1


def _serve(work: queue.SimpleQueue) -> None:
    while True:
        fn, args = work.get()
        # The caller computes every chunk no helper has taken: a helper that fails before
        # taking one loses nothing (and a kernel raises nothing once it has one).
        with contextlib.suppress(Exception):
            fn(*args)
        del fn, args  # the arrays are not held while waiting for the next call
