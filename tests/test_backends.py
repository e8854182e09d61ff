"""Every loss on every array library: values and closed-form gradients against the mpmath
oracle in every dtype the library has, the kind, device and dtype of the result, the
flavours, the [0, 1] check, and a call that mixes libraries."""

from __future__ import annotations

import array_api_compat
import numpy as np
import oracle
import portable
import pytest
import tolerances

import bceloss
from bceloss.compat import mindspore, paddle

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
REDUCTIONS = ["none", "mean", "sum"]


def _reduced(values, reduction):
    if reduction == "none":
        return values
    total = oracle.exact_sum(values)
    return total / values.size if reduction == "mean" else total


def _assert_same_kind(got, like, backend, dtype):
    assert type(got) is type(like)
    assert got.dtype == backend.dtype(dtype)
    assert array_api_compat.device(got) == array_api_compat.device(like)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logits_loss_against_oracle(typed, reduction):
    backend, dtype = typed
    (x, y, w, p), (loss, *_) = portable.logits_case()
    X, Y, W, P = (backend.asarray(a, dtype) for a in (x, y, w, p))
    got = BCEL(X, Y, W, reduction, P)
    _assert_same_kind(got, X, backend, dtype)
    assert tuple(got.shape) == (x.shape if reduction == "none" else ())
    tolerances.assert_values(
        backend.to_numpy(got), _reduced(loss, reduction), dtype, reduced=reduction != "none"
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probabilities_loss_against_oracle(typed, reduction):
    backend, dtype = typed
    (x, y, w), (loss, *_) = portable.probabilities_case()
    X, Y, W = (backend.asarray(a, dtype) for a in (x, y, w))
    got = BCE(X, Y, W, reduction)
    _assert_same_kind(got, X, backend, dtype)
    tolerances.assert_values(
        backend.to_numpy(got), _reduced(loss, reduction), dtype, reduced=reduction != "none"
    )


def test_logits_value_and_grad_against_oracle(typed):
    backend, dtype = typed
    (x, y, w, p), (loss, dx, dy, _, _) = portable.logits_case()
    X, Y, W, P = (backend.asarray(a, dtype) for a in (x, y, w, p))
    value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(X, Y, W, "sum", P)
    _assert_same_kind(value, X, backend, dtype)
    _assert_same_kind(gx, X, backend, dtype)
    _assert_same_kind(gy, Y, backend, dtype)
    tolerances.assert_values(backend.to_numpy(value), oracle.exact_sum(loss), dtype, reduced=True)
    lx, ly = tolerances.logits_grad_scales(x, y, w, p)
    tolerances.assert_gradient(backend.to_numpy(gx), dx, lx, dtype)
    tolerances.assert_gradient(backend.to_numpy(gy), dy, ly, dtype)


def test_probabilities_value_and_grad_against_oracle(typed):
    backend, dtype = typed
    (x, y, w), (_, dx, dy, _) = portable.probabilities_case()
    X, Y, W = (backend.asarray(a, dtype) for a in (x, y, w))
    _, (gx, gy) = bceloss.value_and_grad(BCE, argnums=(0, 1))(X, Y, W, "mean")
    _assert_same_kind(gx, X, backend, dtype)
    sx, sy = tolerances.probs_grad_scales(x, y, w)
    n = x.size
    tolerances.assert_gradient(backend.to_numpy(gx) * n, dx, sx, dtype)
    tolerances.assert_gradient(backend.to_numpy(gy) * n, dy, sy, dtype)


def test_every_flavour_on_every_library(backend):
    # The flavours rename and check; the numbers are the core's, on the caller's arrays.
    (x, y, w, p), _ = portable.logits_case()
    X, Y, W, P = (backend.asarray(a, "float32") for a in (x, y, w, p))
    (q, t, v), _ = portable.probabilities_case()
    Q, T, V = (backend.asarray(a, "float32") for a in (q, t, v))
    logits_core = backend.to_numpy(BCEL(X, Y, W, "sum", P))
    probs_core = backend.to_numpy(BCE(Q, T, V, "sum"))
    calls = {
        "mindspore.binary_cross_entropy_with_logits": (
            mindspore.binary_cross_entropy_with_logits(X, Y, W, "sum", P),
            logits_core,
        ),
        "mindspore.BCEWithLogitsLoss": (
            mindspore.BCEWithLogitsLoss("sum", W, P)(X, Y),
            logits_core,
        ),
        "paddle.binary_cross_entropy_with_logits": (
            paddle.binary_cross_entropy_with_logits(X, Y, W, "sum", P),
            logits_core,
        ),
        "paddle.BCEWithLogitsLoss": (paddle.BCEWithLogitsLoss(W, "sum", P)(X, Y), logits_core),
        "mindspore.binary_cross_entropy": (
            mindspore.binary_cross_entropy(Q, T, V, "sum"),
            probs_core,
        ),
        "mindspore.BCELoss": (mindspore.BCELoss(V, "sum")(Q, T), probs_core),
        "paddle.binary_cross_entropy": (paddle.binary_cross_entropy(Q, T, V, "sum"), probs_core),
        "paddle.BCELoss": (paddle.BCELoss(V, "sum")(Q, T), probs_core),
        "BCEWithLogitsLoss": (bceloss.BCEWithLogitsLoss(W, "sum", P)(X, Y), logits_core),
        "BCELoss": (bceloss.BCELoss(V, "sum")(Q, T), probs_core),
    }
    for name, (got, want) in calls.items():
        _assert_same_kind(got, X, backend, "float32")
        assert backend.to_numpy(got) == want, name


def test_integer_targets_are_cast(backend):
    X = backend.asarray([0.5, -2.0, 3.0], "float32")
    got = BCEL(X, backend.asarray(np.array([1, 0, 1])), reduction="none")
    want = BCEL(X, backend.asarray([1.0, 0.0, 1.0], "float32"), reduction="none")
    _assert_same_kind(got, X, backend, "float32")
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


def test_probabilities_outside_0_1_are_a_value_error(backend):
    X = backend.asarray([0.5, 1.5, -0.25], "float32")
    Y = backend.asarray([1.0, 0.0, 0.0], "float32")
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        # eager libraries raise at the call; on Dask the check runs as the graph computes
        backend.to_numpy(BCE(X, Y))


def test_results_stay_on_the_input_device():
    # array-api-strict's second device and PyTorch's data-less 'meta' device
    xs = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    dev = xs.Device("device1")
    x = xs.asarray([0.5, -1.0], device=dev)
    y = xs.asarray([1.0, 0.0], device=dev)
    for red in REDUCTIONS:
        assert BCEL(x, y, reduction=red).device == dev
        assert BCE(xs.abs(x), y, reduction=red).device == dev
    _, g = bceloss.value_and_grad(BCEL)(x, y)
    assert g.device == dev
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    t = torch.zeros(2, 3, device="meta")
    assert BCEL(t, t).device == t.device
    assert BCEL(t, t, reduction="none").device == t.device


@pytest.mark.parametrize("arg", ["target", "weight", "pos_weight"])
def test_mixing_libraries_is_a_type_error_naming_both(backend, arg):
    X = backend.asarray([0.5, -1.0], "float32")
    args = {"target": backend.asarray([1.0, 0.0], "float32")}
    other, name = (
        (pytest.importorskip("array_api_strict").asarray([1.0, 0.0]), "array_api_strict")
        if backend.label == "numpy"
        else (np.array([1.0, 0.0], np.float32), "numpy")
    )
    args[arg] = other
    want = f"got input from {backend.label} and {arg} from {name}"
    with pytest.raises(TypeError, match=want):
        BCEL(X, **args)
