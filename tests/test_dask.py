"""Dask: a call builds a lazy graph; computing it goes chunk by chunk (memory stays near a
chunk's size, far below the array's), on the local scheduler and on a dask.distributed
cluster on loopback; the [0, 1] check runs inside the graph."""

from __future__ import annotations

import tracemalloc

import numpy as np
import oracle
import portable
import pytest

import bceloss

da = pytest.importorskip("dask.array", reason="Dask is not installed")

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
CHUNK = 1 << 18  # elements per chunk: 2 MiB of float64
CHUNKS = 128  # 256 MiB per float64 array, four arrays: 1 GiB


def _pattern():
    """Finite logits, targets, weights, pos_weights (flat) and their oracle losses."""
    (x, y, w, p), (loss, *_) = portable.logits_case()
    flat = [a.ravel() for a in np.broadcast_arrays(x, y, w, p, loss)]
    keep = np.isfinite(flat[0])
    return [a[keep] for a in flat[:4]], flat[4][keep]


def _tiled(values, n, chunk, calls=None):
    """A lazy array of n elements repeating `values`, each chunk generated when computed."""

    def block(block_info=None):
        if calls is not None:
            calls.append(block_info[None]["chunk-location"])
        start, stop = block_info[None]["array-location"][0]
        return values[np.arange(start, stop) % values.size]

    return da.map_blocks(block, chunks=((chunk,) * (n // chunk),), dtype=values.dtype)


def test_a_call_builds_a_lazy_graph():
    (x, y, w, _), _ = _pattern()
    calls = []
    X = _tiled(x, 4 * 1024, 1024, calls)
    out = BCEL(X, _tiled(y, 4 * 1024, 1024), _tiled(w, 4 * 1024, 1024), "mean")
    grad = bceloss.value_and_grad(BCEL)(X, _tiled(y, 4 * 1024, 1024))[1]
    assert isinstance(out, da.Array)
    assert isinstance(grad, da.Array)
    assert grad.chunks == X.chunks
    assert calls == []  # nothing computed yet
    out.compute(scheduler="sync")
    assert sorted(calls) == [(i,) for i in range(4)]  # each chunk made once


def test_mean_of_a_large_array_goes_chunk_by_chunk():
    (x, y, w, p), loss = _pattern()
    n = CHUNK * CHUNKS
    args = [_tiled(a, n, CHUNK) for a in (x, y, w, p)]
    out = BCEL(args[0], args[1], args[2], "mean", args[3])
    tracemalloc.start()
    try:
        got = float(out.compute(scheduler="threads", num_workers=2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the repeated pattern: mean = sum(pattern) * (n / size) / n, the pattern's exact mean
    reps, rest = divmod(n, x.size)
    want = (oracle.exact_sum(loss) * reps + oracle.exact_sum(loss[:rest])) / n
    assert got == pytest.approx(want, rel=1e-13)
    whole = 4 * n * 8  # the four float64 arrays, were they materialised
    assert peak < whole / 8, f"peak {peak / 2**20:.0f} MiB for {whole / 2**20:.0f} MiB of input"


def test_probability_check_runs_inside_the_graph():
    x = da.from_array(np.array([0.2, 0.5, 0.9, 1.5]), chunks=2)
    y = da.zeros(4, chunks=2)
    out = BCE(x, y)  # no error yet: the values are not known
    with pytest.raises(ValueError, match=r"got values from 1\.5 to 1\.5"):
        out.compute(scheduler="sync")
    assert float(BCE(x[:3], y[:3]).compute()) == pytest.approx(
        float(BCE(np.array([0.2, 0.5, 0.9]), np.zeros(3))), rel=1e-15
    )


def test_on_a_local_distributed_cluster():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    (x, y, w, p), loss = _pattern()
    n = 16 * 4096
    args = [_tiled(a, n, 4096) for a in (x, y, w, p)]
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            protocol="tcp",  # a real loopback socket, not the in-process transport
            host="127.0.0.1",
            dashboard_address=":0",  # (any free port: two runs at once on one machine)
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        mean = BCEL(args[0], args[1], args[2], "mean", args[3])
        value, grad = bceloss.value_and_grad(BCEL)(args[0], args[1], args[2], "sum", args[3])
        got_mean, got_value, got_grad = client.compute([mean, value, grad], sync=True)
        with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\]"):
            client.compute(BCE(args[0], args[1]), sync=True)  # logits are not probabilities
    local = [np.asarray(a.compute(scheduler="sync")) for a in args]
    want_value, want_grad = bceloss.value_and_grad(BCEL)(
        local[0], local[1], local[2], "sum", local[3]
    )
    reps, rest = divmod(n, x.size)
    want_mean = (oracle.exact_sum(loss) * reps + oracle.exact_sum(loss[:rest])) / n
    assert float(got_mean) == pytest.approx(want_mean, rel=1e-13)
    assert float(got_value) == pytest.approx(float(want_value), rel=1e-13)
    np.testing.assert_array_equal(got_grad, want_grad)
