"""SPEC §4 for the core: every bad input gets its exception and a message that says what."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import bceloss

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
FUNCTIONS = [BCE, BCEL]
X = np.array([[0.25, 0.5, 0.75], [0.1, 0.2, 0.3]])
Y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize(
    ("arg", "value", "shown"),
    [
        ("input", [[0.25, 0.5, 0.75], [0.1, 0.2, 0.3]], "list"),
        ("input", 0.5, "float"),
        ("target", [0.0, 1.0, 1.0], "list"),
        ("target", 1, "int"),
        ("weight", [1.0, 2.0, 3.0], "list"),
        ("weight", 2.0, "float"),
    ],
)
def test_non_arrays_are_type_errors(fn, arg, value, shown):
    kwargs = {"input": X, "target": Y, arg: value}
    with pytest.raises(TypeError, match=rf"^{arg} must be an array .*; got {shown}$"):
        fn(**kwargs)


@pytest.mark.parametrize("value", [[1.0, 2.0, 3.0], 2.0])
def test_non_array_pos_weight_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"^pos_weight must be an array"):
        BCEL(X, Y, pos_weight=value)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize(
    ("reduction", "shown"), [(None, "NoneType"), (1, "int"), (b"mean", "bytes")]
)
def test_reduction_not_a_str_is_a_type_error(fn, reduction, shown):
    with pytest.raises(TypeError, match=rf"^reduction must be a str, .*; got {shown}$"):
        fn(X, Y, reduction=reduction)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("reduction", ["MEAN", "avg", "", "batchmean"])
def test_unknown_reduction_is_a_value_error(fn, reduction):
    msg = f"reduction must be one of ('none', 'mean', 'sum', 'weighted_mean'); got {reduction!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        fn(X, Y, reduction=reduction)


@pytest.mark.parametrize("cls", [bceloss.BCELoss, bceloss.BCEWithLogitsLoss])
def test_loss_classes_check_reduction_when_built(cls):
    with pytest.raises(ValueError, match="reduction must be one of"):
        cls(reduction="avg")
    with pytest.raises(TypeError, match="reduction must be a str"):
        cls(reduction=0)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, np.uint8])
def test_non_floating_input_is_a_type_error(fn, dtype):
    x = np.zeros((2, 3), dtype)
    with pytest.raises(
        TypeError,
        match=r"^input must have a floating dtype \(float16, bfloat16, float32, float64\); got ",
    ):
        fn(x, Y)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_non_numeric_target_is_a_type_error(fn):
    with pytest.raises(
        TypeError, match=r"^target must have a floating or integer dtype; got complex128$"
    ):
        fn(X, Y.astype(np.complex128))


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2, 3), (3, 2)])
def test_target_of_another_shape_is_a_value_error(fn, shape):
    with pytest.raises(
        ValueError,
        match=re.escape(f"target must have the shape of input (2, 3); got shape {shape}"),
    ):
        fn(X, np.zeros(shape))


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("shape", [(5,), (2,), (4, 2, 3), (3, 3)])
def test_weight_that_does_not_broadcast_to_the_input_is_a_value_error(fn, shape):
    # (4, 2, 3) broadcasts with (2, 3) but beyond it: PyTorch refuses it too.
    with pytest.raises(
        ValueError,
        match=re.escape(f"weight must broadcast to input shape (2, 3); got shape {shape}"),
    ):
        fn(X, Y, np.ones(shape))


@pytest.mark.parametrize("shape", [(5,), (2,), (2, 2, 3)])
def test_pos_weight_that_does_not_broadcast_is_a_value_error(shape):
    with pytest.raises(
        ValueError,
        match=re.escape(f"pos_weight must broadcast to input shape (2, 3); got shape {shape}"),
    ):
        BCEL(X, Y, pos_weight=np.ones(shape))


@pytest.mark.parametrize("bad", [-0.5, 1.5, -np.inf, np.inf, 1 + 1e-12])
def test_probabilities_outside_0_1_are_a_value_error(bad):
    x = X.copy()
    x[1, 2] = bad
    with pytest.raises(
        ValueError, match=r"^input must hold probabilities in \[0, 1\]; got values from "
    ):
        BCE(x, Y)


def test_probability_error_reports_the_offending_range():
    x = np.array([-0.5, 0.5, 2.0])
    with pytest.raises(ValueError, match=r"got values from -0.5 to 2$"):
        BCE(x, np.zeros(3))


def test_weight_with_a_non_numeric_dtype_is_a_type_error():
    with pytest.raises(TypeError, match=r"^weight must have a real numeric dtype; got complex128$"):
        BCEL(X, Y, np.ones(3, np.complex128))


def test_arrays_of_two_kinds_are_a_type_error():
    torch = pytest.importorskip("torch", reason="needs a second array library")
    with pytest.raises(
        TypeError, match=r"one kind; got input from .*numpy.* and target from .*torch"
    ):
        BCEL(X, torch.tensor(Y))


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_arguments_are_never_modified(fn):
    rng = np.random.default_rng(0)
    x = rng.random((6, 4))
    y = rng.random((6, 4))
    w = rng.random((4,))
    p = rng.random((6, 1))
    kwargs = {"pos_weight": p} if fn is BCEL else {}
    before = [a.copy() for a in (x, y, w, p)]
    fn(x, y, w, "none", **kwargs)
    bceloss.value_and_grad(fn, (0, 1))(x, y, w, "sum", **kwargs)
    for a, b in zip((x, y, w, p), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_read_only_non_contiguous_and_zero_stride_arrays_work(fn):
    rng = np.random.default_rng(1)
    base = rng.random((8, 10))
    x = base[::2, 1:9:2]  # non-contiguous in both axes
    y = np.broadcast_to(rng.random((1, 4)), (4, 4))  # zero stride, read-only
    w = rng.random((4, 4))
    w.flags.writeable = False
    got = fn(x, y, w, "none")
    want = fn(np.ascontiguousarray(x), np.array(y), np.array(w), "none")
    np.testing.assert_array_equal(got, want)
    _, (gx, gy) = bceloss.value_and_grad(fn, (0, 1))(x, y, w, "sum")
    assert gx.shape == gy.shape == (4, 4)
    assert gx.flags.writeable


def test_bfloat16_is_a_floating_input():
    x = np.array([0.5, -0.5], ml_dtypes.bfloat16)
    assert BCEL(x, np.array([1.0, 0.0], ml_dtypes.bfloat16)).dtype == ml_dtypes.bfloat16
