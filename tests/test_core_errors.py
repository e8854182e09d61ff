"""SPEC §4 for the core: every bad input gets its exception and a message that says what."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import bceloss
from bceloss import _dispatch, _evaluate
from bceloss.compat import mindspore as ms_flavour
from bceloss.compat import paddle as pd_flavour

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
    # a weight given as a number is shown the 0-d array that holds it
    hint = ""
    if (arg, shown) == ("weight", "float"):
        hint = re.escape(" (a number: np.asarray(2.0) holds it, as a 0-d array)")
    with pytest.raises(TypeError, match=rf"^{arg} must be an array .*; got {shown}{hint}$"):
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


# --- hostile arrays (issue 21): a clear error or the right number, never a wrong one -----

FOCAL = bceloss.sigmoid_focal_loss
# every entry point: (name, loss, names of its input and target)
ENTRY_POINTS = [
    ("binary_cross_entropy", BCE, ("input", "target")),
    ("binary_cross_entropy_with_logits", BCEL, ("input", "target")),
    ("sigmoid_focal_loss", FOCAL, ("input", "target")),
    ("BCELoss", bceloss.BCELoss(), ("input", "target")),
    ("BCEWithLogitsLoss", bceloss.BCEWithLogitsLoss(), ("input", "target")),
    ("value_and_grad", bceloss.value_and_grad(BCEL), ("input", "target")),
    ("value_and_grad(focal)", bceloss.value_and_grad(FOCAL, (0, 1)), ("input", "target")),
    ("paddle.binary_cross_entropy", pd_flavour.binary_cross_entropy, ("input", "label")),
    ("paddle.bce_with_logits", pd_flavour.binary_cross_entropy_with_logits, ("logit", "label")),
    ("paddle.sigmoid_focal_loss", pd_flavour.sigmoid_focal_loss, ("logit", "label")),
    ("paddle.BCELoss", pd_flavour.BCELoss(), ("input", "label")),
    ("paddle.BCEWithLogitsLoss", pd_flavour.BCEWithLogitsLoss(), ("logit", "label")),
    ("mindspore.binary_cross_entropy", ms_flavour.binary_cross_entropy, ("input", "target")),
    ("mindspore.bce_with_logits", ms_flavour.binary_cross_entropy_with_logits, ("input", "target")),
    ("mindspore.BCELoss", ms_flavour.BCELoss(), ("logits", "labels")),
    ("mindspore.BCEWithLogitsLoss", ms_flavour.BCEWithLogitsLoss(), ("logits", "labels")),
]
X32, Y32 = X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize(
    ("fn", "names"), [e[1:] for e in ENTRY_POINTS], ids=[e[0] for e in ENTRY_POINTS]
)
@pytest.mark.parametrize("position", [0, 1])
def test_none_as_input_or_target_is_a_type_error_naming_it(fn, names, position):
    args = [X32, Y32]
    args[position] = None
    msg = f"{names[position]} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got None"
    with pytest.raises(TypeError, match=f"^{re.escape(msg)}$"):
        fn(*args)


@pytest.mark.parametrize("scalar", [np.float32(0.5), np.float64(0.5), np.float16(0.5)])
@pytest.mark.parametrize("arg", ["input", "target", "weight", "pos_weight"])
def test_numpy_scalars_are_refused_alike(scalar, arg):
    # one rule: a NumPy scalar is not an array, whatever its dtype (np.float64 is a Python
    # float, np.float32 was accepted as a 0-d array before)
    x, y = np.asarray(np.float32(0.5)), np.asarray(np.float32(1.0))
    kwargs = {"input": x, "target": y, arg: scalar}
    msg = (
        f"{arg} must be an array (NumPy, PyTorch, JAX, CuPy or Dask); got "
        f"numpy.{type(scalar).__name__} (a NumPy scalar: np.asarray(value) makes it a 0-d array)"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(msg)}$"):
        BCEL(**kwargs)
    assert BCEL(**{k: np.asarray(v) for k, v in kwargs.items()}).shape == ()


@pytest.mark.parametrize("arg", ["input", "target", "weight", "where"])
def test_masked_arrays_are_refused_pointing_to_where(arg):
    kwargs = {"input": X, "target": Y, "weight": np.ones(3), "where": np.ones((2, 3), bool)}
    kwargs[arg] = np.ma.masked_array(kwargs[arg], mask=np.zeros(kwargs[arg].shape, bool))
    with pytest.raises(TypeError, match=rf"^{arg} must not be a NumPy masked array .*where="):
        BCEL(**kwargs)


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


@pytest.mark.parametrize("n", [10, _dispatch.KERNEL_MIN_SIZE + 904])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("integral", [False, True], ids=["float", "int"])
def test_byte_order_never_changes_the_answer_or_the_path(n, dtype, integral):
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    probs = rng.random(n).astype(dtype)
    kind = np.int32 if integral else dtype
    y = (rng.random(n) < 0.5).astype(kind)
    w = rng.integers(0, 4, n).astype(kind)
    p = rng.integers(1, 4, n).astype(kind)
    native = (x, probs, y, w, p)
    big = tuple(_big_endian(a) for a in native)
    assert not big[0].dtype.isnative
    bx, bprobs, by, bw, bp = big
    call = BCEL._bceloss_bind(bx, by, bw, "mean", bp)
    assert (_dispatch.kernel_plan(call) is None) == (n < _dispatch.KERNEL_MIN_SIZE)
    for reduction in ("none", "mean", "sum", "weighted_mean"):
        pairs = [
            (BCEL(x, y, w, reduction, p), BCEL(bx, by, bw, reduction, bp)),
            (BCE(probs, y, w, reduction), BCE(bprobs, by, bw, reduction)),
            (
                FOCAL(x, y.astype(dtype), reduction=reduction),
                FOCAL(bx, _big_endian(y.astype(dtype)), reduction=reduction),
            ),
        ]
        for want, got in pairs:
            assert got.dtype == want.dtype
            assert got.dtype.isnative
            assert got.tobytes() == want.tobytes()
    for fn, first, bfirst in ((BCEL, x, bx), (BCE, probs, bprobs)):
        kwargs = {"pos_weight": p} if fn is BCEL else {}
        bkwargs = {"pos_weight": bp} if fn is BCEL else {}
        want = bceloss.value_and_grad(fn, (0, 1))(first, y, w, "sum", **kwargs)
        got = bceloss.value_and_grad(fn, (0, 1))(bfirst, by, bw, "sum", **bkwargs)
        assert got[0].tobytes() == want[0].tobytes()
        for g, h in zip(got[1], want[1], strict=True):
            assert g.dtype == h.dtype
            assert g.tobytes() == h.tobytes()


def test_a_big_endian_out_is_refused_by_its_dtype():
    x = np.linspace(-2, 2, 6)
    with pytest.raises(TypeError, match=r"^out must have the dtype of input \(float64\); got >f8$"):
        bceloss.value_and_grad(BCEL)(_big_endian(x), np.ones(6), out=_big_endian(x))


def test_focal_gamma_has_a_limit_stated_in_the_message():
    msg = "gamma must be at most 100 (the focal loss's limit); got 1e+39"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        FOCAL(X, Y, gamma=1e39)
    with pytest.raises(ValueError, match=r"^gamma must be at most 100"):
        bceloss.value_and_grad(FOCAL)(X, Y, gamma=100.5)
    assert np.isfinite(FOCAL(X, Y, gamma=100.0)).all()


# (x, y, gamma, dtype) where the focal loss is 0 and the formula returned NaN
FOCAL_ZEROS = [
    (1e6, 1.0, 1.05, np.float64),
    (-1e6, 0.0, 1.05, np.float64),
    (np.inf, 1.0, 3.7, np.float32),
    (-np.inf, 0.0, 3.7, np.float32),
    (1e10, 1.0, 0.27, np.float32),
    (-1e10, 0.0, 0.27, np.float64),
]


@pytest.mark.parametrize(("x", "y", "gamma", "dtype"), FOCAL_ZEROS)
@pytest.mark.parametrize("n", [1, _dispatch.KERNEL_MIN_SIZE])
def test_focal_loss_is_0_not_nan_at_huge_logits(x, y, gamma, dtype, n):
    xs, ys = np.full(n, x, dtype), np.full(n, y, dtype)
    loss = FOCAL(xs, ys, gamma=gamma)
    value, (gx, gy) = bceloss.value_and_grad(FOCAL, (0, 1))(xs, ys, gamma=gamma, reduction="sum")
    assert (loss == 0).all()
    assert value == 0
    assert not np.isnan(gx).any()
    assert not np.isnan(gy).any()
    assert (gx == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_focal_is_never_nan_at_huge_logits_for_any_gamma_on_both_paths(dtype):
    # 468 of 999 gammas in (0, 10) gave NaN at |x| >= 1e10 on the formula path
    big = float(np.finfo(dtype).max)
    base = np.array([1e6, -1e6, 1e10, -1e10, 1e30, -1e30, big, -big, np.inf, -np.inf], dtype)
    xs = np.repeat(base, 4)
    ys = np.tile(np.array([0.0, 1.0, 0.5, 0.3], dtype), base.size)
    reps = -(-_dispatch.KERNEL_MIN_SIZE // xs.size)
    xk, yk = np.tile(xs, reps), np.tile(ys, reps)
    vg = bceloss.value_and_grad(FOCAL, (0, 1))
    for gamma in [*np.linspace(0.01, 10, 999)[::7], 0.27, 1.05, 3.7, 50.0, 100.0]:
        for alpha in (-1.0, 0.25):
            call = FOCAL._bceloss_bind(xs, ys, alpha, float(gamma))
            with np.errstate(all="ignore"):  # as the library calls it (`quiet`)
                slow = _evaluate.formula(call, grad_input=True, grad_target=True)
            fast = vg(xk, yk, alpha, float(gamma), "sum")
            for part in (*slow, fast[0], *fast[1]):
                assert not np.isnan(part).any(), (gamma, alpha)


def test_focal_jax_gradient_is_not_nan_at_huge_logits():
    jnp = pytest.importorskip("jax.numpy")
    jax = pytest.importorskip("jax")
    x = jnp.array([1e10, -1e10, 1e6], jnp.float32)
    y = jnp.array([1.0, 0.0, 1.0], jnp.float32)
    for gamma in (0.27, 1.05, 3.7):
        g = jax.grad(lambda a, gamma=gamma: FOCAL(a, y, gamma=gamma, reduction="sum"))(x)
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_focal_on_torch_is_0_not_nan_at_huge_logits():
    torch = pytest.importorskip("torch")
    x = torch.tensor([1e10, -1e10], requires_grad=True)
    y = torch.tensor([1.0, 0.0])
    loss = FOCAL(x, y, gamma=0.27, reduction="sum")
    loss.backward()
    assert loss.item() == 0
    assert torch.equal(x.grad, torch.zeros(2))


@pytest.mark.parametrize("n", [8, _dispatch.KERNEL_MIN_SIZE + 8])
def test_weight_0_wins_over_an_infinite_pos_weight_on_both_paths(n):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(n) * 3
    x[:4] = [0.0, np.inf, -np.inf, 2.0]
    y = rng.random(n)
    w = np.ones(n)
    w[::2] = 0.0
    p = np.full(n, np.inf)
    loss = BCEL(x, y, w, "none", p)
    _, (gx, gy) = bceloss.value_and_grad(BCEL, (0, 1))(x, y, w, "sum", p)
    for part in (loss, gx, gy):
        np.testing.assert_array_equal(part[::2], 0.0)
    with np.errstate(all="ignore"):  # as the library calls it (`quiet`)
        slow = _evaluate.formula(
            BCEL._bceloss_bind(x, y, w, "sum", p), grad_input=True, grad_target=True
        )
    for part in slow:
        np.testing.assert_array_equal(part[::2], 0.0)
    # NaN in still gives NaN out
    x[0] = np.nan
    assert np.isnan(BCEL(x, y, w, "none", p)[0])


@pytest.mark.parametrize("wdtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("rows", [1, 8197])  # one block, and several with a periodic weight
def test_weighted_mean_of_weights_near_the_dtypes_largest_is_not_inf(wdtype, rows):
    # sum(w l) / sum(w) does not depend on the weights' scale: weights 2^126 times larger (w l
    # and sum(w) beyond float32's range) give the loss and gradients of the weights as they
    # are, on the kernels (float32 input)
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((rows, 3)) * 3).astype(np.float32)
    y = rng.random((rows, 3)).astype(np.float32)
    w = rng.uniform(1, 4, 3).astype(np.float32)
    big = (w.astype(np.float64) * 2.0**126).astype(ml_dtypes.finfo(wdtype).dtype)
    small = (big.astype(np.float64) * 2.0**-126).astype(np.float32)  # big, exactly rescaled
    want_loss, (want_gx, want_gy) = bceloss.value_and_grad(BCEL, (0, 1))(
        x, y, small, "weighted_mean"
    )
    loss, (gx, gy) = bceloss.value_and_grad(BCEL, (0, 1))(x, y, big, "weighted_mean")
    # a power of two scales exactly: the same bits, value and gradients
    assert np.isfinite(want_loss)
    assert np.isfinite(want_gx).all()
    assert np.isfinite(want_gy).all()
    assert loss == want_loss == BCEL(x, y, big, "weighted_mean")
    np.testing.assert_array_equal(gx, want_gx)
    np.testing.assert_array_equal(gy, want_gy)
    # a dropped element's weight may be anything, inf included: the kept ones' scale counts
    keep = np.ones(x.shape, bool)
    keep[0, 0] = False
    wild = np.where(keep, np.broadcast_to(big, x.shape), np.inf).astype(big.dtype)
    tame = np.broadcast_to(small, x.shape)
    got = bceloss.value_and_grad(BCEL)(x, y, wild, "weighted_mean", where=keep)
    want = bceloss.value_and_grad(BCEL)(x, y, tame, "weighted_mean", where=keep)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


def test_weighted_mean_gradient_of_huge_weights_on_the_formula_path():
    # PyTorch's second-order graph, a weight that requires a gradient, torch.func: the
    # formula's gradient w g / sum(w) with sum(w) beyond float32's range (it was 0)
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(1000, generator=gen), torch.rand(1000, generator=gen)
    w = (torch.rand(1000, generator=gen) + 1) * 2.0**126
    want = torch.sigmoid(x.double()) - y.double()
    want = (w.double() * want / w.double().sum()).float()
    atol = 8 * 2.0**-23 * float(want.abs().max())  # the elementwise gradient's bound
    for create_graph, weight_grad in ((True, False), (False, True)):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_(weight_grad)
        loss = BCEL(xx, y, ww, "weighted_mean")
        (gx,) = torch.autograd.grad(loss, xx, create_graph=create_graph)
        torch.testing.assert_close(gx, want, rtol=0, atol=atol)
    gx = torch.func.grad(lambda a: BCEL(a, y, w, "weighted_mean"))(x)
    torch.testing.assert_close(gx, want, rtol=0, atol=atol)


def test_torch_out_follows_numpys_rules():
    torch = pytest.importorskip("torch")
    vg = bceloss.value_and_grad(BCEL)
    x = torch.tensor([0.2, -0.7, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    before = x.clone()
    shared = "out must not share memory with input, target, weight, pos_weight or where"
    for out in (x, x[:], x.view(3), y):
        with pytest.raises(ValueError, match=f"^{re.escape(shared)}$"):
            vg(x, y, out=out)
    assert torch.equal(x, before)
    leaf = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^out must be writeable; got a read-only array$"):
        vg(x, y, out=leaf)
    out = torch.empty(3, dtype=torch.float64)
    _value, grad = vg(x, y, out=out)
    assert grad is out
    np.testing.assert_array_equal(out.numpy(), vg(x, y)[1].numpy())
