"""A loss over files on a dask.distributed cluster: partitions of rows, one task each.

The workers run `stream.evaluate_rows` on row ranges that start on chunk boundaries and
return block sums; this process merges them and finishes, so the result is the in-process
one to the last bit. `_reach` probes the scheduler's address first, so that an unreachable
one is one line, not a `Client`'s tracebacks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

from bceloss.cli.sources import InputError
from bceloss.cli.stream import Job, Result, evaluate_rows, finish, merge


def partitions(job: Job, parts: int) -> list[tuple[int, int]]:
    """Up to `parts` row ranges covering every row, each starting on a chunk boundary."""
    chunks = max(1, math.ceil(job.rows / job.chunk_rows))
    size = math.ceil(chunks / max(1, min(parts, chunks))) * job.chunk_rows
    return [(a, min(a + size, job.rows)) for a in range(0, max(job.rows, 1), size)]


def _reach(address: str) -> None:
    """Check the address and open (and close) a TCP connection before `Client` tries: a
    Client that fails to start prints tracebacks when it is collected."""
    import socket

    from distributed.comm.addressing import get_address_host_port, parse_address

    try:
        scheme, _ = parse_address(address)
        if scheme == "inproc":
            msg = "inproc:// names a scheduler inside one process; give a tcp:// address"
            raise ValueError(msg)
        if scheme not in ("tcp", "tls"):
            return
        host, port = get_address_host_port(address)
        socket.create_connection((host, port), timeout=10).close()
    except (OSError, ValueError) as e:
        msg = f"cannot reach the Dask scheduler at {address}: {e}"
        raise InputError(msg) from None


def _close_failed_client(error: BaseException, client_type) -> None:
    """Close the Client whose constructor raised `error` (found in the traceback's frames):
    left to the garbage collector, it would print a traceback of its own, 20 s later."""
    tb = error.__traceback__
    while tb is not None:
        client = tb.tb_frame.f_locals.get("self")
        if isinstance(client, client_type):
            with contextlib.suppress(Exception):
                client.close(timeout=2)
            client.status = "closed"  # nothing left for __del__ to close
            with contextlib.suppress(Exception):
                client._loop_runner.stop()  # the loop thread the Client started
            return
        tb = tb.tb_next


def evaluate_on_cluster(
    job: Job, address: str, on_rows: Callable[[int], None] | None = None
) -> Result:
    """The losses, computed by the workers of the dask.distributed scheduler at `address`.

    Each worker reads its partition of rows from the files (which it must see at the same
    paths) and returns block sums; this process combines them.
    """
    try:
        from distributed import Client, as_completed
    except ImportError:
        msg = "--scheduler needs dask.distributed (pip install 'bceloss[dask]')"
        raise InputError(msg) from None
    _reach(address)
    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except Exception as e:  # noqa: BLE001 (whatever answered there, one line says so)
        _close_failed_client(e, Client)
        msg = f"cannot use the Dask scheduler at {address}: {type(e).__name__}: {e}"
        raise InputError(msg) from None
    with client:
        threads = sum(client.nthreads().values()) or 1
        ranges = partitions(job, 4 * threads)
        futures = [client.submit(evaluate_rows, job, a, b, pure=False) for a, b in ranges]
        rows = dict(zip(futures, (b - a for a, b in ranges), strict=True))
        parts = []
        for future in as_completed(futures, loop=client.loop):
            parts.append(future.result())
            if on_rows is not None:
                on_rows(rows[future])
    return finish(job, merge(parts))
