"""Non-temporal stores: large kernel outputs written past the caches.

An ordinary store first reads the cache line it writes into ("read for ownership"), so an
output array larger than the caches costs its size twice in memory traffic, and it evicts
the inputs the next pieces need. A non-temporal store writes whole lines straight to memory.
`stream_row` stores one 64-byte row that way; `streaming_fence` makes such stores visible to
every other thread (they are weakly ordered), and runs once a thread has written its part.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

ROW_BYTES = 64  # a cache line; stream_row's destination must be aligned to it


@intrinsic
def stream_row(typingctx, dst, k, src, j):
    """dst[k:] = src[j:] for ROW_BYTES bytes, a non-temporal store; dst[k] must be
    ROW_BYTES-aligned (src need not be)."""
    if not (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.dtype == src.dtype
        and isinstance(k, types.Integer)
        and isinstance(j, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        element = context.get_value_type(signature.args[0].dtype)
        row = ir.VectorType(element, ROW_BYTES // context.get_abi_sizeof(element))
        src_ptr = builder.bitcast(builder.gep(s.data, [args[3]]), row.as_pointer())
        dst_ptr = builder.bitcast(builder.gep(d.data, [args[1]]), row.as_pointer())
        store = builder.store(builder.load(src_ptr, align=1), dst_ptr, align=ROW_BYTES)
        one = ir.Constant(ir.IntType(32), 1)
        store.set_metadata("nontemporal", builder.module.add_metadata([one]))
        return context.get_dummy_value()

    return types.none(dst, k, src, j), codegen


@intrinsic
def streaming_fence(typingctx):
    """A full memory fence: the non-temporal stores before it are visible to all threads."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@njit(cache=True, error_model="numpy")
def copy_streaming(dst, src, count):
    """dst[:count] = src[:count] (the same element type), the aligned rows non-temporally."""
    width = ROW_BYTES // dst.itemsize
    address = dst.ctypes.data
    if address % dst.itemsize:  # a misaligned array (np.frombuffer at an odd offset): no row
        dst[:count] = src[:count]  # of it can be aligned
        return
    head = min(count, (-address % ROW_BYTES) // dst.itemsize)
    for k in range(head):
        dst[k] = src[k]
    k = head
    while k + width <= count:
        stream_row(dst, k, src, k)
        k += width
    for t in range(k, count):
        dst[t] = src[t]
