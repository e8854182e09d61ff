"""What the tests of the framework flavours (bceloss.compat.*) share: their sample cases and
the checks that every flavour must pass alike, each taking the flavour's own callables."""

from __future__ import annotations

import numpy as np
import oracle
import samples
import tolerances

import bceloss

F32, F64 = np.float32, np.float64


def arr(values, dtype=F32):
    """`values` as a NumPy array of `dtype` (float32 by default, as the documented examples)."""
    return np.array(values, dtype)


def logits_case(seed=0, shape=(5, 4), dtype=F32):
    """(x, y, w, p) of BCE with logits: weight and pos_weight per label (the last axis)."""
    rng = np.random.default_rng(seed)
    x = samples.logits(rng, shape, max_abs=30).astype(dtype)
    y = samples.targets(rng, shape).astype(dtype)
    w = rng.uniform(0, 3, shape[-1:]).astype(dtype)
    p = samples.positive_weights(rng, shape[-1:]).astype(dtype)
    return x, y, w, p


def probs_case(seed=0, shape=(5, 4), dtype=F32):
    """(x, y, w) of BCE on probabilities: a weight per row."""
    rng = np.random.default_rng(seed)
    x = samples.probabilities(rng, shape).astype(dtype)
    y = samples.targets(rng, shape).astype(dtype)
    w = rng.uniform(0, 3, (shape[0], 1)).astype(dtype)
    return x, y, w


def exact_mean(terms, *arrays):
    """The exact (mpmath) mean of the oracle's elementwise loss `terms` at `arrays`."""
    loss, _, _ = oracle.elementwise(terms, *arrays)
    return oracle.exact_sum(loss) / loss.size


def assert_documented(got, documented, exact):
    """Within 2 ulp of the framework's printed figure and 1 ulp of the exact (mpmath) value."""
    assert got.dtype == F32
    assert got.shape == ()
    assert tolerances.ulp_error(got, F32(documented), F32) <= 2
    assert tolerances.ulp_error(got, exact, F32) <= 1


def assert_logits_gradients(gx, gy, dx, dy, arrays, dtype):
    """Within 8 ulp of the largest term of each gradient of SPEC §2 (SPEC §3)."""
    largest_x, largest_y = tolerances.logits_grad_scales(*arrays)
    tolerances.assert_within_ulp_of_largest_term(gx, dx, largest_x, dtype)
    tolerances.assert_within_ulp_of_largest_term(gy, dy, largest_y, dtype)


def assert_untouched(run, arrays):
    """`run()` works on `arrays` made read-only and leaves every one of them as it was."""
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    run()
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)


def assert_value_and_grad_matches_core(flavour, core, argnums):
    """value_and_grad of a flavour's loss equals core's to the bit: `flavour` and `core` are
    (loss, args, kwargs) of the two forms of one loss."""
    fn, args, kwargs = flavour
    value, grads = bceloss.value_and_grad(fn, argnums)(*args, **kwargs)
    core_fn, core_args, core_kwargs = core
    core_value, core_grads = bceloss.value_and_grad(core_fn, argnums)(*core_args, **core_kwargs)
    np.testing.assert_array_equal(value, core_value)
    np.testing.assert_array_equal(value, fn(*args, **kwargs))
    if isinstance(argnums, int):
        grads, core_grads = (grads,), (core_grads,)
    for g, c in zip(grads, core_grads, strict=True):
        assert g.shape == args[0].shape
        assert g.dtype == F32
        np.testing.assert_array_equal(g, c)


def assert_infinite_logits_give_limits(logits_loss):
    """SPEC §2: w (1 - y) inf at x = +inf for y < 1, 0 for y = 1; the mirror image at -inf.
    (Every reference framework returns NaN here.)"""
    x = arr([np.inf, np.inf, -np.inf, -np.inf])
    y = arr([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(logits_loss(x, y, reduction="none"), [0.0, np.inf, 0.0, np.inf])
