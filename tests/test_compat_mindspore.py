"""bceloss.compat.mindspore: MindSpore's signatures, checks and documented numbers
(SPEC §1, §4, §5)."""

from __future__ import annotations

import inspect

import flavours
import ml_dtypes
import numpy as np
import oracle
import pytest
import tolerances
from flavours import F32, arr, logits_case, probs_case
from tolerances import MAX_ULP

import bceloss
from bceloss.compat import mindspore as ms

BF16 = ml_dtypes.bfloat16
DTYPES = [np.float16, BF16, F32]


# ---------------------------------------------------------------- signatures (SPEC §1)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            ms.binary_cross_entropy_with_logits,
            "(input, target, weight=None, reduction='mean', pos_weight=None)",
        ),
        (ms.binary_cross_entropy, "(input, target, weight=None, reduction='mean')"),
        (ms.BCEWithLogitsLoss, "(reduction='mean', weight=None, pos_weight=None)"),
        (ms.BCELoss, "(weight=None, reduction='mean')"),
        (ms.BCEWithLogitsLoss.__call__, "(self, logits, labels)"),
        (ms.BCELoss.__call__, "(self, logits, labels)"),
    ],
)
def test_signatures(obj, expected):
    assert str(inspect.signature(obj)) == expected


def test_public_surface():
    assert sorted(ms.__all__) == [
        "BCELoss",
        "BCEWithLogitsLoss",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
    ]
    assert bceloss.compat.mindspore is ms


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_logits_positional_keyword_and_class_forms_agree_with_core(reduction):
    x, y, w, p = logits_case()
    core = bceloss.binary_cross_entropy_with_logits(x, y, w, reduction, p)
    forms = [
        ms.binary_cross_entropy_with_logits(x, y, w, reduction, p),
        ms.binary_cross_entropy_with_logits(
            input=x, target=y, weight=w, reduction=reduction, pos_weight=p
        ),
        ms.BCEWithLogitsLoss(reduction, w, p)(x, y),
        ms.BCEWithLogitsLoss(reduction=reduction, weight=w, pos_weight=p)(logits=x, labels=y),
    ]
    for got in forms:
        assert got.dtype == F32
        assert got.shape == core.shape
        np.testing.assert_array_equal(got, core)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_probabilities_positional_keyword_and_class_forms_agree_with_core(reduction):
    x, y, w = probs_case()
    core = bceloss.binary_cross_entropy(x, y, w, reduction)
    forms = [
        ms.binary_cross_entropy(x, y, w, reduction),
        ms.binary_cross_entropy(input=x, target=y, weight=w, reduction=reduction),
        ms.BCELoss(w, reduction)(x, y),
        ms.BCELoss(weight=w, reduction=reduction)(logits=x, labels=y),
    ]
    for got in forms:
        np.testing.assert_array_equal(got, core)


def test_defaults_are_mean_and_no_weights():
    x, y, _, _ = logits_case(1)
    expected = bceloss.binary_cross_entropy_with_logits(x, y)
    np.testing.assert_array_equal(ms.binary_cross_entropy_with_logits(x, y), expected)
    np.testing.assert_array_equal(ms.BCEWithLogitsLoss()(x, y), expected)
    p, t, _ = probs_case(1)
    np.testing.assert_array_equal(ms.BCELoss()(p, t), bceloss.binary_cross_entropy(p, t))


@pytest.mark.parametrize("name", ["MEAN", "Sum", "NoNe", "mean"])
def test_reduction_names_are_case_insensitive(name):
    x, y, w, p = logits_case(2)
    expected = bceloss.binary_cross_entropy_with_logits(x, y, w, name.lower(), p)
    np.testing.assert_array_equal(ms.binary_cross_entropy_with_logits(x, y, w, name, p), expected)
    np.testing.assert_array_equal(ms.BCEWithLogitsLoss(name, w, p)(x, y), expected)
    q, t, v = probs_case(2)
    expected = bceloss.binary_cross_entropy(q, t, v, name.lower())
    np.testing.assert_array_equal(ms.binary_cross_entropy(q, t, v, name), expected)
    np.testing.assert_array_equal(ms.BCELoss(v, name)(q, t), expected)


# ------------------------------------------------------- the documented examples


MINDSPORE_X = [[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]]
MINDSPORE_Y = [[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]]


def test_documented_logits_example():
    # mindspore.nn.BCEWithLogitsLoss and mint.nn.functional.binary_cross_entropy_with_logits
    x, y, ones = arr(MINDSPORE_X), arr(MINDSPORE_Y), arr([1.0, 1.0, 1.0])
    exact = flavours.exact_mean(oracle.logits_terms, x, y)
    assert abs(exact - 0.346361182) < 1e-9
    for got in (
        ms.binary_cross_entropy_with_logits(x, y, ones, "mean", ones),
        ms.binary_cross_entropy_with_logits(x, y),
        ms.BCEWithLogitsLoss("mean", ones, ones)(x, y),
    ):
        flavours.assert_documented(got, 0.3463612, exact)


def test_documented_logits_example_of_paddle_runs_here_too():
    x, y = arr([5.0, 1.0, 3.0]), arr([1.0, 0.0, 1.0])
    exact = flavours.exact_mean(oracle.logits_terms, x, y)
    assert abs(exact - 0.456188129) < 1e-9
    flavours.assert_documented(ms.binary_cross_entropy_with_logits(x, y), 0.45618808, exact)
    flavours.assert_documented(ms.BCEWithLogitsLoss()(x, y), 0.45618808, exact)


def test_documented_probabilities_example():
    x, y, w = arr([0.2, 0.7, 0.1]), arr([0.0, 1.0, 0.0]), arr([1.0, 2.0, 2.0])
    exact = flavours.exact_mean(oracle.probs_terms, x, y, w)
    assert abs(exact - 0.382404837) < 1e-9
    flavours.assert_documented(ms.binary_cross_entropy(x, y, w), 0.38240486, exact)
    flavours.assert_documented(ms.BCELoss(w)(x, y), 0.38240486, exact)


# ------------------------------------------------------------------ errors (SPEC §4)

X, Y = arr([[0.2, 0.4, 0.6], [0.1, 0.5, 0.9]]), arr([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]])


def _logits_fn(*args, **kwargs):
    return ms.binary_cross_entropy_with_logits(*args, **kwargs)


def _logits_cls(x, y, **kwargs):
    return ms.BCEWithLogitsLoss(**kwargs)(x, y)


def _probs_fn(*args, **kwargs):
    return ms.binary_cross_entropy(*args, **kwargs)


def _probs_cls(x, y, **kwargs):
    return ms.BCELoss(**kwargs)(x, y)


ALL = [_logits_fn, _logits_cls, _probs_fn, _probs_cls]
# the class forms name the arrays as MindSpore's construct(logits, labels) does
NAMES = {_logits_fn: ("input", "target"), _probs_fn: ("input", "target")}
NAMES |= {_logits_cls: ("logits", "labels"), _probs_cls: ("logits", "labels")}

ERRORS = [
    # (args, kwargs, exception, message with {i} and {t} for the array names)
    ((X.tolist(), Y), {}, TypeError, "{i} must be an array .*; got list"),
    ((X, 0.5), {}, TypeError, "{t} must be an array .*; got float"),
    ((X, Y), {"weight": [1.0, 2.0, 3.0]}, TypeError, "weight must be an array .*; got list"),
    ((X, Y), {"reduction": None}, TypeError, "reduction must be a str.*; got NoneType"),
    ((X, Y), {"reduction": 1}, TypeError, "reduction must be a str.*; got int"),
    ((X, Y), {"reduction": "avg"}, ValueError, r"reduction must be one of .*; got 'avg'"),
    ((X.astype(np.int32), Y), {}, TypeError, "{i} must have a floating dtype .*; got int32"),
    ((X.astype(np.float64), Y.astype(np.float64)), {}, TypeError,
     "{i} must have one of the dtypes float16, bfloat16, float32; got float64"),
    ((X, Y.astype(np.float64)), {}, TypeError,
     "{t} must have one of the dtypes float16, bfloat16, float32; got float64"),
    ((X, Y.astype(np.int64)), {}, TypeError, "{t} must have a floating dtype; got int64"),
    ((X, Y.astype(bool)), {}, TypeError, "{t} must have a floating dtype; got bool"),
    ((X, Y[0]), {}, ValueError, r"{t} must have the shape of {i} \(2, 3\); got shape \(3,\)"),
    ((X, Y), {"weight": arr([1.0, 2.0])}, ValueError,
     r"weight must broadcast to input shape \(2, 3\); got shape \(2,\)"),
    ((X, Y), {"weight": np.ones((4, 2, 3), F32)}, ValueError,
     r"weight must broadcast to input shape \(2, 3\); got shape \(4, 2, 3\)"),
]  # fmt: skip

LOGITS_ONLY = [
    ((X, Y), {"pos_weight": arr([1.0] * 5)}, ValueError,
     r"pos_weight must broadcast to input shape \(2, 3\); got shape \(5,\)"),
    ((X, Y), {"pos_weight": 2.0}, TypeError, "pos_weight must be an array .*; got float"),
]  # fmt: skip

PROBS_ONLY = [
    ((X * 2, Y), {}, ValueError,
     r"{i} must hold probabilities in \[0, 1\]; got values from 1\.2 to 1\.8$"),
    ((X - 0.5, Y), {}, ValueError,
     r"{i} must hold probabilities in \[0, 1\]; got values from -0\.4 to -0\.1$"),
]  # fmt: skip


def _cases():
    for fn in ALL:
        extra = LOGITS_ONLY if fn in (_logits_fn, _logits_cls) else PROBS_ONLY
        for args, kwargs, exc, msg in ERRORS + extra:
            yield pytest.param(fn, args, kwargs, exc, msg, id=f"{fn.__name__}-{msg[:40]}")


@pytest.mark.parametrize(("fn", "args", "kwargs", "exc", "msg"), list(_cases()))
def test_errors(fn, args, kwargs, exc, msg):
    i, t = NAMES[fn]
    with pytest.raises(exc, match=msg.format(i=i, t=t)):
        fn(*args, **kwargs)


@pytest.mark.parametrize("cls", [ms.BCEWithLogitsLoss, ms.BCELoss])
def test_classes_check_reduction_when_built(cls):
    with pytest.raises(TypeError, match="reduction must be a str"):
        cls(reduction=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        cls(reduction="batchmean")


def test_arguments_untouched_and_read_only_arrays_work():
    x, y, w, p = logits_case(3)

    def run():
        ms.binary_cross_entropy_with_logits(x, y, w, "sum", p)
        bceloss.value_and_grad(ms.BCEWithLogitsLoss("sum", w, p), (0, 1))(x, y)

    flavours.assert_untouched(run, (x, y, w, p))


# ------------------------------------------------------- values and gradients: the oracle


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_values_against_oracle(dtype):
    x, y, w, p = logits_case(4, (40, 4))
    x, y, w, p = (a.astype(dtype) for a in (x, y, w, p))
    got = ms.binary_cross_entropy_with_logits(x, y, w, "none", p)
    assert got.dtype == dtype
    exact, _, _ = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    assert tolerances.ulp_error(got, exact, dtype).max() <= MAX_ULP
    total = ms.BCEWithLogitsLoss("SUM", w, p)(x, y)
    assert total.dtype == dtype
    assert tolerances.ulp_error(total, oracle.exact_sum(exact), dtype) <= MAX_ULP


@pytest.mark.parametrize("dtype", DTYPES)
def test_probabilities_values_against_oracle(dtype):
    x, y, w = probs_case(5, (40, 4))
    x, y, w = (a.astype(dtype) for a in (x, y, w))
    got = ms.BCELoss(w, "none")(x, y)
    assert got.dtype == dtype
    exact, _, _ = oracle.elementwise(oracle.probs_terms, x, y, w)
    assert tolerances.ulp_error(got, exact, dtype).max() <= MAX_ULP


def test_gradients_against_oracle():
    x, y, w, p = logits_case(6, (40, 4))
    _, (gx, gy) = bceloss.value_and_grad(ms.binary_cross_entropy_with_logits, (0, 1))(
        x, y, w, "sum", p
    )
    _, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    flavours.assert_logits_gradients(gx, gy, dx, dy, (x, y, w, p), F32)


# ----------------------------------------------------------- value_and_grad on the flavour


def _all_losses():
    x, y, w, p = logits_case(7)
    q, t, v = probs_case(7)
    return [
        (ms.binary_cross_entropy_with_logits, (x, y), {"weight": w, "pos_weight": p},
         bceloss.binary_cross_entropy_with_logits),
        (ms.BCEWithLogitsLoss("Mean", w, p), (x, y), {},
         bceloss.BCEWithLogitsLoss(w, "mean", p)),
        (ms.binary_cross_entropy, (q, t), {"weight": v}, bceloss.binary_cross_entropy),
        (ms.BCELoss(v, "SUM"), (q, t), {}, bceloss.BCELoss(v, "sum")),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("argnums", [0, 1, (0, 1), (1, 0)])
def test_value_and_grad_matches_core(case, argnums):
    fn, args, kwargs, core = _all_losses()[case]
    flavours.assert_value_and_grad_matches_core((fn, args, kwargs), (core, args, kwargs), argnums)


def test_value_and_grad_keywords_of_the_class_form():
    x, y, w, p = logits_case(8)
    loss = ms.BCEWithLogitsLoss("sum", w, p)
    v1, g1 = bceloss.value_and_grad(loss)(logits=x, labels=y)
    v2, g2 = bceloss.value_and_grad(loss)(x, y)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("case", range(4))
def test_value_and_grad_needs_a_scalar_loss(case):
    fn, args, kwargs, _ = _all_losses()[case]
    if isinstance(fn, ms.BCEWithLogitsLoss | ms.BCELoss):
        fn = type(fn)(reduction="NONE")
    else:
        kwargs = {**kwargs, "reduction": "None"}
    with pytest.raises(ValueError, match="value_and_grad needs a scalar loss"):
        bceloss.value_and_grad(fn)(*args, **kwargs)


# ------------------------------------------ the bugs of MindSpore not reproduced (SPEC §5)


def test_broadcast_weight_on_probabilities_is_the_broadcast_product():
    # MindSpore CPU returns garbage here; the result must equal the explicitly tiled weight.
    x, y, _ = probs_case(9, (3, 4))
    w = arr([0.5, 1.0, 2.0, 3.0])
    tiled = np.broadcast_to(w, x.shape).copy()
    np.testing.assert_array_equal(ms.BCELoss(w, "none")(x, y), ms.BCELoss(tiled, "none")(x, y))
    exact, _, _ = oracle.elementwise(oracle.probs_terms, x, y, w)
    assert (
        tolerances.ulp_error(ms.binary_cross_entropy(x, y, w, "none"), exact, F32).max() <= MAX_ULP
    )


def test_infinite_logits_give_limits_not_nan():
    flavours.assert_infinite_logits_give_limits(ms.binary_cross_entropy_with_logits)


def test_float16_mean_does_not_overflow():
    # MindSpore CPU accumulates in float16 and returns inf for 50,000 losses of about 10.
    x = np.full(50_000, -10.0, np.float16)
    y = np.ones(50_000, np.float16)
    got = ms.binary_cross_entropy_with_logits(x, y)
    exact, _, _ = oracle.logits_terms(-10.0, 1.0)
    assert got.dtype == np.float16
    assert tolerances.ulp_error(got, exact, np.float16) <= 1


def test_torch_arrays_follow_the_same_rules():
    torch = pytest.importorskip("torch", reason="PyTorch is an optional backend")
    x, y, w, p = logits_case(10)
    expected = ms.BCEWithLogitsLoss("Sum", w, p)(x.astype(np.float16), y.astype(np.float16))
    tx, ty, tw, tp = (torch.tensor(a) for a in (x, y, w, p))
    got = ms.BCEWithLogitsLoss("Sum", tw, tp)(tx.half(), ty.half())
    assert got.dtype == torch.float16
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(TypeError, match=r"input must have one of the dtypes .*; got float64"):
        ms.binary_cross_entropy_with_logits(tx.double(), ty.double())
    with pytest.raises(TypeError, match="target must have a floating dtype; got int64"):
        ms.binary_cross_entropy_with_logits(tx, ty.long())
