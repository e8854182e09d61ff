"""How the library adds up losses: fixed blocks, each summed in float64, combined exactly.

The flattened (C-order) elementwise loss is cut into blocks of BLOCK consecutive elements;
each block is summed in float64 in a fixed order (`block_sums`), and the block sums are
combined with `math.fsum`, which is exactly rounded and so independent of the order the
blocks arrive in. Anyone who computes the same blocks (a thread of a kernel, a chunk of a
file stream, a Dask worker) and hands the block sums on gets the same total, to the last bit.
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
