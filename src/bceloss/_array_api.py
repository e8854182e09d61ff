"""The adapters of libraries without a framework of their own: the generic array API one
(CuPy, any standard library), array-api-strict's, and NumPy's, which the fused kernel reads.

`ArrayAPI` lists everything the package asks of a library; the framework adapters
(`_torch`, `_jax`, `_dask`) override what differs for theirs. `_dispatch` picks the adapter
from the arrays' namespace; the rest of the package only calls it.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from bceloss import _dispatch, _evaluate, _memo, _summation, _validation


class ArrayAPI:
    """A library of the array API standard: the formulas in its own ops, sums in float64."""

    fused_kernel = False  # whether the fused NumPy kernel can read its arrays
    writable_out = False  # whether value_and_grad's `out=` can be one of its arrays

    def quiet(self):
        """A context in which the formulas' expected overflows and log(0) stay silent."""
        return contextlib.nullcontext()

    def accumulator(self, xp, like):
        """The dtype sums run in: float64 where the library and device have it."""
        return xp.float64

    def total(self, xp, a, keep, acc):
        """The sum of `a`'s elements where `keep` (None: all), in `acc`."""
        return xp.sum(a if keep is None else xp.where(keep, a, xp.zeros_like(a)), dtype=acc)

    def count(self, xp, keep, acc):
        """The number of True elements of `keep`."""
        return xp.sum(xp.astype(keep, acc))

    def round(self, xp, a, dtype):
        """`a` in the result's `dtype`."""
        return xp.astype(a, dtype, copy=False)

    def as_result(self, xp, value):
        """`value` as the library's result (a 0-d array where the library returns scalars)."""
        return value

    def elementwise(self, call, **wanted):
        """(loss, d/dx, d/dy) elementwise, as `_evaluate.formula`."""
        return _evaluate.formula(call, **wanted)

    def loss(self, call):
        """The loss of a validated call (differentiable where the library records)."""
        return _evaluate.evaluate(call)

    def native_loss_and_grad(self, call, wrt, *, out, seed):
        """The library's own route to `_evaluate.loss_and_grad`, or None: the generic one."""

    def checked_probabilities(self, xp, x, name):
        """`x`, checked to hold probabilities where its values can be read (concrete)."""
        if math.prod(tuple(x.shape)) == 0:
            return x
        _validation.probabilities_in_range(xp, x, name)
        return x

    def shares_memory(self, a, b) -> bool:
        """Whether `a` and `b` may share memory (for `out=`)."""
        return False

    def writeable(self, a) -> bool:
        """Whether `a` can be written (for `out=`)."""
        return True

    def native(self, a):
        """`a` in the machine's byte order (None stays None)."""
        return a


class NumPyBacked(ArrayAPI):
    """array-api-strict: NumPy computes in this thread, and warns."""

    def quiet(self):
        return np.errstate(all="ignore")


class NumPy(NumPyBacked):
    """NumPy: sums in `_summation`'s fixed blocks (any chunking adds up to the same bits),
    the fused kernel (from `_dispatch.KERNEL_MIN_SIZE` elements), 0-d arrays for scalars."""

    fused_kernel = True
    writable_out = True

    def total(self, xp, a, keep, acc):
        # only the kept elements, in order: the same blocks, so the same sum, as a[keep]
        return _summation.total(a if keep is None else a[keep])

    def count(self, xp, keep, acc):
        return int(xp.count_nonzero(keep))

    def as_result(self, xp, value):
        # NumPy returns scalars from 0-d operations; the contract is a 0-d array
        return xp.asarray(value)

    def shares_memory(self, a, b) -> bool:
        return np.may_share_memory(a, b)

    def writeable(self, a) -> bool:
        return a.flags.writeable

    def native(self, a):
        # a big-endian array (read from a file): one copy in native order
        if a is None or a.dtype.isnative:
            return a
        return a.astype(a.dtype.newbyteorder("="))


def _numpy_form(a):
    """What validation reads of a NumPy array (`_memo`): its shape and dtype (byte order
    included)."""
    return (np.ndarray, a.shape, a.dtype)


def _numpy_lane(bind, args, kwargs, owner=None):
    """NumPy's express lane (`_dispatch.EXPRESS_LANES`): the loss, the call validated once a
    form (`_memo`), and for a form whose kernel's constants are kept (`_Prepared`) computed
    straight from the arguments; None for an argument without a form (a framework's tensor:
    its adapter). `owner`, the loss module making the call, keeps nothing here."""
    kernel, call = _memo.adapted(bind, args, kwargs, _Prepared.of)
    if kernel is not None:
        return kernel.loss((*args, *kwargs.values(), None))
    return None if call is None else call.backend.loss(call)


class _Prepared:
    """A remembered NumPy form's kernel constants (`_kernels.Prepared`) and where its arrays
    are among the arguments (`_memo.Remembered.picker`)."""

    __slots__ = ("arrays", "kernel")

    def __init__(self, arrays, kernel):
        self.arrays, self.kernel = arrays, kernel

    @staticmethod
    def of(memo, call):
        """The form's `_Prepared`, or False where the kernel's constants are not kept (the
        formula runs, a mask, a 'weighted_mean' of a weight: `_kernels.prepare`)."""
        plan = _dispatch.kernel_plan(call) if type(call.backend) is NumPy else None
        if plan is None:
            return False
        from bceloss import _kernels

        kernel = _kernels.prepare(call, plan)
        return False if kernel is None else _Prepared(memo.picker(), kernel)

    def loss(self, given):
        """The loss of a call of the form, `given` its (*args, *kwargs.values(), None)."""
        x, y, w, p, _ = self.arrays(given)
        return self.kernel.loss(x, y, w, p)


def in_unit_range(a) -> bool:
    """Whether a NumPy array's values lie in [0, 1] or are NaN (BCE's check of
    probabilities: `_validation.probabilities_in_range`, for `_memo`): in one pass of the
    kernels' library for float32 and float64 in C order."""
    from bceloss._kernels import _native

    inside = _native.in_unit_range(a)
    return not ((a < 0) | (a > 1)).any() if inside is None else inside


_memo.register(np.ndarray, _numpy_form, in_unit_range)
_dispatch.EXPRESS_LANES[np.ndarray] = _numpy_lane
