"""How the library adds up losses: fixed blocks, each summed in float64, combined exactly.

The flattened (C-order) elementwise loss is cut into blocks of BLOCK consecutive elements;
each block is summed in float64 in a fixed order (`block_sums`), and the block sums are
combined with `math.fsum`, which is exactly rounded and so independent of the order the
blocks arrive in. Anyone who computes the same blocks (a thread of a kernel, a chunk of a
file stream, a Dask worker: `lazy_total`) and hands the block sums on gets the same total,
to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 1 << 13  # elements of a block
LANES = 64  # partial sums of a block: element k goes to lane k % LANES


def block_sums(values) -> np.ndarray:
    """The float64 sums of the consecutive BLOCK-element blocks of `values` (C order).

    Element k of a block is added to lane k % LANES, each lane a sequential float64 sum
    from 0; then lanes j and j + LANES / 2 are added, and so on, halving, to one. A fixed
    order that a SIMD loop follows at full speed (the kernels of `_kernels`), and NumPy here:
    its reduction over the middle axis of (blocks, rows, LANES) adds row after row.
    """
    flat = np.ravel(values)
    blocks = -(-flat.size // BLOCK)
    rows = BLOCK // LANES if blocks > 1 else -(-flat.size // LANES)
    padded = np.zeros(blocks * rows * LANES)  # zeros to a whole row: x + 0 is x
    padded[: flat.size] = flat
    lanes = padded.reshape(blocks, rows, LANES).sum(axis=1)
    width = LANES
    while width > 1:
        width //= 2
        lanes = lanes[:, :width] + lanes[:, width : 2 * width]
    return lanes[:, 0]


def combine(sums) -> float:
    """The exactly rounded total of block sums, in any order."""
    return math.fsum(np.asarray(sums, dtype=np.float64).tolist())


def total(values) -> float:
    """The library's sum of a NumPy array: `combine(block_sums(values))`."""
    return combine(block_sums(values))


def lazy_total(values, keep=None):
    """`total` of the elements of a Dask array where `keep` (broadcast to it) is true, all of
    them without it: a lazy 0-d float64 Dask array holding NumPy's `total(values[keep])`.

    The kept elements are numbered across the chunks in C order. Each chunk sums the blocks
    that begin and end inside it and keeps the rest apart: its elements before its first
    block boundary and after its last, fewer than BLOCK each. A tree of tasks then merges
    neighbouring chunks' parts, completing the blocks that straddle them, so that no task
    holds more than a few blocks of elements; the last combines every block sum.
    """
    import dask
    import dask.array as da

    flat = values.reshape(-1)
    per_chunk = ((1,) * flat.numblocks[0],)
    if keep is None:
        firsts = da.from_array(np.cumsum((0, *flat.chunks[0][:-1])), chunks=per_chunk)
        arrays = (flat, firsts)
    else:
        kept = da.broadcast_to(da.asarray(keep), values.shape).reshape(-1).rechunk(flat.chunks)
        counts = kept.map_blocks(_count, chunks=per_chunk, dtype=np.int64)
        arrays = (flat, da.cumsum(counts) - counts, kept)
    # a part a chunk, computed in the task that computes the chunk (blockwise: fused)
    parts = da.map_blocks(
        _chunk_part, *arrays, chunks=per_chunk, dtype=object, meta=np.empty(0, dtype=object)
    )
    level = parts.to_delayed().ravel().tolist()
    while len(level) > 1:  # neighbours, in order, MERGED at a time
        level = [
            dask.delayed(_merged)(*level[i : i + MERGED]) for i in range(0, len(level), MERGED)
        ]
    return da.from_delayed(dask.delayed(_finished)(level[0]), shape=(), dtype=np.float64)


MERGED = 8  # parts a task of `lazy_total` merges


def _count(keep):
    return np.array([np.count_nonzero(keep)])


def _part(head, sums, tail, crossed):
    # What a run of consecutive kept elements contributes: crossed, whether it reaches a
    # block boundary (from its first element to just after its last); if so, its elements
    # before the first boundary (head), the sums of the whole blocks between the first and
    # the last, and its elements after the last (tail); if not, all its elements are head.
    # In a 1-element object array: Dask's chunk of one.
    part = np.empty(1, dtype=object)
    part[0] = (head, sums, tail, crossed)
    return part


def _chunk_part(values, first, keep=None):
    # the `_part` of a chunk whose kept elements are numbered first[0], first[0] + 1, ...
    kept = values if keep is None else values[keep]
    head = -int(first[0]) % BLOCK  # elements before the first boundary
    if head > kept.size:
        return _part(kept.copy(), np.zeros(0), kept[:0].copy(), False)
    whole = (kept.size - head) // BLOCK * BLOCK
    sums = block_sums(kept[head : head + whole]) if whole else np.zeros(0)
    # copies: a view, even an empty one, would keep the whole chunk in memory until the end
    return _part(kept[:head].copy(), sums, kept[head + whole :].copy(), True)


def _merged(*parts):
    # the `_part` of consecutive runs from theirs, in order
    head, sums, tail, crossed = parts[0][0]
    for ((h, s, t, c),) in parts[1:]:
        if not crossed:  # the first run's elements come before the second's first boundary
            head, sums, tail, crossed = np.concatenate([head, h]), s, t, c
        elif not c:  # the second run lies between the first's last boundary and the next
            tail = np.concatenate([tail, h])
        else:  # between the two, no element or one whole block
            middle = np.concatenate([tail, h])
            done = [block_sums(middle)] if middle.size else []
            sums, tail = np.concatenate([sums, *done, s]), t
    return _part(head, sums, tail, crossed)


def _finished(part) -> np.ndarray:
    # the total from the `_part` of every kept element (numbered from 0: no head)
    _, sums, last, _ = part[0]
    if last.size:  # the last block, short: padded with zeros as `block_sums` pads it in a
        if sums.size:  # whole array (to a whole block where there are others)
            last = np.concatenate([last, np.zeros(BLOCK - last.size, last.dtype)])
        sums = np.append(sums, block_sums(last))
    return np.asarray(combine(sums))
