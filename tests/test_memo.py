"""Validation remembered (`_memo`): a call of a form validated before is not validated
again and gets the usual route's results; what has to be checked every call still is."""

from __future__ import annotations

import numpy as np
import pytest

import bceloss
from bceloss import _call, _memo, _validation

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits


@pytest.fixture
def validated(monkeypatch):
    """A list that grows by one at every validation, the memory of forms emptied."""
    counts = []
    real = _validation.validate
    monkeypatch.setattr(_validation, "validate", lambda **k: counts.append(1) or real(**k))
    _memo.forget()
    return counts


def _usual(fn, *args, **kwargs):
    return _call.run(fn._bceloss_bind(*args, **kwargs))


def test_numpy_calls_of_a_form_are_validated_once_with_the_usual_results(validated):
    rng = np.random.default_rng(3)
    w = rng.random(10).astype(np.float32)
    p = (rng.random(10) + 0.5).astype(np.float32)
    module = bceloss.BCEWithLogitsLoss(pos_weight=p, reduction="sum")
    cases = [
        (BCEL, {}),
        (BCEL, {"reduction": "none", "label_smoothing": 0.1}),
        (BCEL, {"weight": w, "pos_weight": p}),
        (BCEL, {"where": rng.random((64, 10)) > 0.3, "reduction": "weighted_mean", "weight": w}),
        (bceloss.sigmoid_focal_loss, {"gamma": 1.5, "reduction": "mean"}),
        (module, {}),
    ]
    for fn, kwargs in cases:
        lane = 0
        for _ in range(3):
            x = rng.normal(0, 4, (64, 10)).astype(np.float32)
            y = rng.random((64, 10)).astype(np.float32)
            p *= 1.5  # an array option changed in place between calls: read again
            before = len(validated)
            got = fn(x, y, **kwargs)
            lane += len(validated) - before
            usual = _usual(
                getattr(fn, "function", fn), x, y, **kwargs, **getattr(fn, "_options", dict)()
            )
            assert got.tobytes() == usual.tobytes()
            assert (got.dtype, got.shape) == (usual.dtype, usual.shape)
        assert lane == 2, fn  # the first two calls of the form only


def test_numpy_calls_of_a_form_in_other_dtypes_and_layouts_give_the_usual_bits(validated):
    # from the third call of a form, the kernel's constants kept for it
    # (`_kernels.Prepared`) run on the arguments: halves (as their bits), integer and bool
    # targets, transposed arrays (copied flat), broadcast weights, sizes with threads
    import ml_dtypes

    from bceloss import _kernels

    rng = np.random.default_rng(6)
    big = 4 * _kernels.launch.SERIAL_SIZE + 5
    cases = [
        ((64, 10), np.float16, np.float16, {}),
        ((64, 10), ml_dtypes.bfloat16, np.float32, {"reduction": "sum"}),
        ((64, 10), np.float64, np.int64, {"weight": (1, 10), "pos_weight": (10,)}),
        ((10, 64), np.float32, np.bool_, {"reduction": "none", "transposed": True}),
        ((3, big), np.float32, np.float32, {"weight": (3, 1), "label_smoothing": 0.3}),
    ]
    for shape, xdtype, ydtype, options in cases:
        kwargs = dict(options)
        transposed = kwargs.pop("transposed", False)
        for _ in range(4):
            x = rng.normal(0, 4, shape).astype(xdtype)
            y = (rng.random(shape) > 0.5).astype(ydtype)
            if transposed:
                x, y = x.T, y.T
            for name in ("weight", "pos_weight"):
                if name in options:
                    kwargs[name] = rng.random(options[name]).astype(np.float32) + 0.5
            got = BCEL(x, y, **kwargs)
            usual = _usual(BCEL, x, y, **kwargs)
            assert got.tobytes() == usual.tobytes(), (shape, xdtype, options)
            assert (got.dtype, got.shape) == (usual.dtype, usual.shape)
    kept = [m.adapter for m in _memo._CALLS.values() if isinstance(m, _memo.Remembered)]
    assert len(kept) == len(cases)
    assert all(kept)  # each form ran on its kernel's constants


def test_what_has_to_be_checked_every_call_still_is(validated):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2, (8, 3))
    y = rng.random((8, 3))
    # BCE on probabilities: its input's values, every call
    BCE(y, y)
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        BCE(y + 1, y)
    # errors raise every call, never remembered
    for _ in range(2):
        with pytest.raises(ValueError, match="target must have the shape of input"):
            BCEL(x, y[:4])
    # a form whose validation makes a new array (a big-endian input in native order) is
    # validated every call, with the usual results; an integer target is cast when the loss
    # is computed, so its form is remembered
    for args, lane_validations in (((x.astype(">f8"), y), 3), ((x, (y > 0.5).astype(int)), 2)):
        before = len(validated)
        for _ in range(3):
            assert BCEL(*args).tobytes() == _usual(BCEL, *args).tobytes()
        assert len(validated) - before == lane_validations + 3  # + the usual route's
    # an option's value is part of the form
    assert BCEL(x, y, reduction="sum") != BCEL(x, y, reduction="mean")
    assert BCEL(x, y, label_smoothing=0.2) != BCEL(x, y, label_smoothing=0.1)


def test_one_array_in_two_arguments_is_not_taken_for_the_form(validated):
    # a first validated call that had one array in two arguments (weighted by its own target)
    # cannot tell which argument feeds which array: the form is validated every call, and a
    # later call with two arrays gets its own numbers; a form first met without the alias
    # maps each argument to its place, so a later alias is read right too
    rng = np.random.default_rng(5)
    x, y, w = (rng.random((8, 3)) for _ in range(3))
    for first in ({"weight": y}, {"weight": w}):
        _memo.forget()
        for _ in range(2):
            BCEL(x, y, **first)
        for kwargs in ({"weight": w}, {"weight": y}):
            assert BCEL(x, y, **kwargs).tobytes() == _usual(BCEL, x, y, **kwargs).tobytes()
    assert BCEL(x, y, weight=w) != BCEL(x, y, weight=y)
    # the memory keeps the newest forms, up to its size
    _memo.forget()
    for n in range(1, _memo.MAX_FORMS + 3):
        BCEL(np.zeros(n), np.zeros(n))
    assert len(_memo._CALLS) == _memo.MAX_FORMS


def test_threads_that_overflow_the_memory_of_forms_at_once_all_finish():
    # four threads calling with a new shape each time: each past MAX_FORMS forgets the
    # oldest form, at times the same one as another thread (switching threads as often as
    # CPython allows); every call still gives its loss
    import sys
    import threading

    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    _memo.forget()
    errors = []

    def work(seed):
        gen = torch.Generator().manual_seed(seed)
        try:
            for i in range(4000):
                n = 1 + (i * 7919 + seed * 104729) % 4000
                x, y = torch.randn(n, generator=gen), torch.rand(n, generator=gen)
                assert BCEL(x, y).numpy().tobytes() == _usual(BCEL, x, y).numpy().tobytes()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def _unit_range_cases():
    """Arrays for BCE's check of probabilities."""
    tiny = np.finfo(np.float64).tiny
    yield np.array([0.0, 0.25, 1.0])
    yield np.array([0.5, np.nan, 1.0])  # NaN passes (and propagates to the loss)
    yield np.array([-0.0, 5e-324, tiny])  # -0 and the subnormals are in range
    yield np.array([0.5, np.nextafter(1.0, 2.0)])  # one ulp above 1 (1 in float32)
    yield np.array([0.5, np.nextafter(np.float32(1), np.float32(2))])
    yield np.array([0.5, -5e-324])  # the smallest negative (-0 in float32)
    yield np.array([0.5, -1e-40])  # a negative float32 subnormal
    yield np.array([np.inf, 0.5])
    yield np.array([0.5, 0.5, -np.inf])
    yield np.linspace(-0.5, 1.5, 1001)
    yield np.append(np.full(3 * 4096, 0.5), 1.5)  # the kernel's blocks: outside in the last
    yield np.append(np.full(3 * 4096 + 7, 0.5), np.nan)
    yield np.empty(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("values", list(_unit_range_cases()), ids=str)
def test_the_kernels_check_of_probabilities_is_validations(values, dtype):
    from bceloss import _array_api
    from bceloss._kernels import _native

    a = values.astype(dtype)
    passes = all(not (v < 0 or v > 1) for v in a.tolist())  # Python's comparisons
    assert _native.in_unit_range(a) is passes
    assert _array_api.in_unit_range(a) is passes
    # the validation's own check agrees
    try:
        _validation.probabilities_in_range(np, a, "input")
        assert passes
    except ValueError:
        assert not passes
    # another layout: None from the kernel, NumPy's check instead
    if a.size > 1:
        assert _native.in_unit_range(np.repeat(a, 2)[1::2]) is None
        assert _array_api.in_unit_range(np.repeat(a, 2)[1::2]) is passes
    assert _native.in_unit_range(np.zeros(a.shape, np.int64)) is None


def _probability_calls():
    """Calls of BCE on probabilities in every place an express lane takes them: (library,
    loss function, kwargs of options)."""
    yield "numpy", BCE, {}
    yield "numpy", BCE, {"weight": np.full(10, 0.5), "reduction": "sum"}
    yield "numpy", bceloss.BCELoss(), {}


def test_a_remembered_form_of_bce_on_probabilities_checks_values_every_call(validated):
    # BCE on probabilities is remembered where the input's class checks its values: every
    # later call still raises the loss's own error for a value outside [0, 1] (and passes
    # NaN), the calls in range are not validated again, with the usual results
    rng = np.random.default_rng(5)
    for _, fn, kwargs in _probability_calls():
        lane = 0
        for step in range(6):
            p = rng.random((64, 10))
            y = rng.random((64, 10))
            if step == 4:
                p[3, 7] = 1.5
            if step == 5:
                p[0, 0] = np.nan
            before = len(validated)
            if step == 4:
                with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
                    fn(p, y, **kwargs)
                continue
            got = fn(p, y, **kwargs)
            lane += len(validated) - before
            usual = _usual(
                getattr(fn, "function", fn), p, y, **kwargs, **getattr(fn, "_options", dict)()
            )
            assert np.asarray(got).tobytes() == np.asarray(usual).tobytes()
        assert lane == 2, (fn, kwargs)  # the first two calls of the form only


def _flavour_probability_losses():
    from bceloss.compat import mindspore as bm
    from bceloss.compat import paddle as pd

    yield "paddle function", pd.binary_cross_entropy, "input"
    yield "paddle class", pd.BCELoss(reduction="sum"), "input"
    yield "mindspore function", bm.binary_cross_entropy, "input"
    yield "mindspore class", bm.BCELoss(), "logits"


@pytest.mark.parametrize("case", list(_flavour_probability_losses()), ids=lambda c: c[0])
def test_the_flavours_bce_on_probabilities_checks_values_every_call(validated, case):
    # the flavours' NumPy calls of a remembered form: a value outside [0, 1] at any call
    # is the flavour's own error, with the name it gives the input
    _, loss, name = case
    rng = np.random.default_rng(6)
    for step in range(5):
        p = rng.random((16, 5)).astype(np.float32)
        y = rng.random((16, 5)).astype(np.float32)
        if step == 4:
            p[1, 1] = -0.25
            with pytest.raises(ValueError, match=rf"{name} must hold probabilities in \[0, 1\]"):
                loss(p, y)
        else:
            assert np.isfinite(loss(p, y))
