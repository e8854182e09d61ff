"""The Dask adapter: lazy arrays, computed block by block by the blocks' own library.

Each block (NumPy or CuPy) is computed as the whole array of its library would be (on NumPy
the fused kernel at every size, so that Dask gets the numbers NumPy gets), one task a block;
the reductions are Dask's. The [0, 1] check of probabilities is embedded in the graph: it
runs chunk by chunk as the loss is computed, and the error names the range found in the
offending chunk.
"""

from __future__ import annotations

import functools

import dask.array as da

from bceloss import _array_api, _dispatch, _dtypes, _evaluate

_NAMES = ("input", "target", "weight", "pos_weight", "where")


class Dask(_array_api.ArrayAPI):
    """Dask arrays: lazy, block by block."""

    def elementwise(self, call, *, loss=True, grad_input=False, grad_target=False):
        wanted = {"loss": loss, "grad_input": grad_input, "grad_target": grad_target}
        names = [n for n in _NAMES if getattr(call, n) is not None]
        arrays = da.broadcast_arrays(*(getattr(call, n) for n in names))
        count = sum(map(bool, wanted.values()))

        def block(*blocks):
            xp, backend = _dispatch.backend_of(*blocks)
            inner = call.replace(xp=xp, backend=backend, **dict(zip(names, blocks, strict=True)))
            with backend.quiet():
                parts = _block_elementwise(inner, **wanted)
                return xp.stack([v for v in parts if v is not None])

        stacked = da.map_blocks(
            block,
            *arrays,
            new_axis=0,
            chunks=((count,), *arrays[0].chunks),
            dtype=_dtypes.compute_dtype(call.xp, call.dtype),
        )
        rows = iter(range(count))  # the wanted parts, in order, are the rows of `stacked`
        return tuple(stacked[next(rows)] if want else None for want in wanted.values())

    def round(self, xp, a, dtype):
        # each block quietly: float16 overflows to inf
        return a.map_blocks(functools.partial(_round_block, dtype=dtype), dtype=dtype)

    def checked_probabilities(self, xp, x, name):
        return x.map_blocks(functools.partial(_checked_block, name=name), dtype=x.dtype)


def _block_elementwise(call, **wanted):
    """The elementwise parts of one block; on NumPy the fused kernel's at every size, so
    that Dask gets the numbers NumPy gets for the whole array."""
    block = call.replace(shape=tuple(call.input.shape))
    plan = _dispatch.kernel_plan(block, min_size=1)
    if plan is None:
        return _evaluate.formula(block, **wanted)
    from bceloss import _kernels

    return _kernels.elementwise(block, plan, **wanted)


def _round_block(block, dtype):
    xp, backend = _dispatch.backend_of(block)
    with backend.quiet():
        return xp.astype(block, dtype, copy=False)


def _checked_block(block, name: str):
    xp, backend = _dispatch.backend_of(block)
    return backend.checked_probabilities(xp, block, name)
