"""Dask: a call builds a lazy graph; computing it goes chunk by chunk (memory stays near a
chunk's size, far below the array's), on the local scheduler and on a dask.distributed
cluster on loopback; the [0, 1] check runs inside the graph; results are NumPy's to the
last bit, however the arrays are chunked."""

from __future__ import annotations

import itertools
import tracemalloc

import ml_dtypes
import numpy as np
import oracle
import portable
import pytest

import bceloss
from bceloss import _summation

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
            dashboard_address=None,
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


@pytest.mark.parametrize(
    ("shape", "chunks", "keep_shape"),
    [
        ((50_000,), 1000, None),  # chunks smaller than a block: every block straddles
        ((50_000,), 8192, (50_000,)),  # chunks of a block, a mask moving the boundaries
        ((50_000,), 12_289, None),
        ((40, 900), (7, 250), (40, 1)),  # 2-d chunks (flattened in C order), a row mask
        ((3, 50, 70), (2, 17, 70), (70,)),
        ((5000,), 700, None),  # one block, short
        ((0,), 1, None),
        ((20_000,), 3000, ()),  # a 0-d mask
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lazy_total_adds_up_numpys_blocks_bit_for_bit(shape, chunks, keep_shape, dtype):
    rng = np.random.default_rng(sum(shape))
    keep = None if keep_shape is None else rng.random(keep_shape) < 0.6
    kept_at = np.broadcast_to(True if keep is None else keep, shape)
    # the kept elements: pairs x, -x over 20 decades, shuffled, so that the total is the
    # blocks' rounding errors, and depends on where the blocks begin; the others large
    half = rng.normal(size=kept_at.sum() // 2) * 10.0 ** rng.uniform(-8, 12, kept_at.sum() // 2)
    v = rng.normal(size=shape) * 1e6
    v[kept_at] = rng.permutation(np.concatenate([half, -half, [1.0] * (kept_at.sum() % 2)]))
    v = v.astype(dtype)
    kept = v[kept_at]
    want = _summation.total(kept)
    if kept.size > 2 * _summation.BLOCK:  # blocks cut elsewhere give another total
        shifted = np.append(_summation.block_sums(kept[:5]), _summation.block_sums(kept[5:]))
        assert _summation.combine(shifted) != want
    lazy_keep = None if keep is None else da.from_array(keep, chunks=-1)
    got = _summation.lazy_total(da.from_array(v, chunks=chunks), lazy_keep)
    assert isinstance(got, da.Array)
    got = got.compute(scheduler="threads", num_workers=2)
    assert got.dtype == np.float64
    assert got.tobytes() == np.float64(want).tobytes()


def _numpy_and_dask_cases():
    losses = {"logits": BCEL, "probabilities": BCE}
    layouts = [((100,), 30), ((20_000,), 7001), ((64, 300), (10, 128))]
    dtypes = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
    reductions = ["none", "mean", "sum", "weighted_mean"]
    for i, (kind, layout, dtype, reduction) in enumerate(
        itertools.product(losses, layouts, dtypes, reductions)
    ):
        # a weight per element or per label, with or without a mask, in turn
        yield losses[kind], layout, dtype, reduction, ("full", "last")[i % 2], i % 3 == 0


@pytest.mark.parametrize(
    ("loss", "layout", "dtype", "reduction", "weight", "masked"), list(_numpy_and_dask_cases())
)
def test_results_and_gradients_are_numpys_to_the_bit(
    loss, layout, dtype, reduction, weight, masked
):
    shape, chunks = layout
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = rng.normal(0, 4, shape) if loss is BCEL else rng.random(shape)
    x, y = x.astype(dtype), rng.random(shape).astype(dtype)
    w = rng.uniform(0, 3, shape if weight == "full" else shape[-1:]).astype(dtype)
    keep = rng.random(shape) < 0.7 if masked else None

    def lazy(a):
        return None if a is None else da.from_array(a, chunks=chunks if a.shape == shape else -1)

    kwargs = {"weight": w, "reduction": reduction, "where": keep}
    lazy_kwargs = {"weight": lazy(w), "reduction": reduction, "where": lazy(keep)}
    want = loss(x, y, **kwargs)
    got = loss(lazy(x), lazy(y), **lazy_kwargs).compute(scheduler="sync")
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()
    if reduction != "none":
        step = bceloss.value_and_grad(loss, (0, 1))
        want_value, want_grads = step(x, y, **kwargs)
        value, grads = step(lazy(x), lazy(y), **lazy_kwargs)
        assert value.compute(scheduler="sync").tobytes() == want_value.tobytes()
        for g, want_g in zip(grads, want_grads, strict=True):
            assert g.compute(scheduler="sync").tobytes() == want_g.tobytes()
