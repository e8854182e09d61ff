"""The public surface: what `bceloss` exports, and the forms of its results."""

from __future__ import annotations

import numpy as np
import pytest

import bceloss


def test_all_is_pinned():
    assert sorted(bceloss.__all__) == [
        "BCELoss",
        "BCEWithLogitsLoss",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "compat",
        "get_num_threads",
        "set_num_threads",
        "sigmoid_focal_loss",
        "value_and_grad",
    ]
    for name in bceloss.__all__:
        assert getattr(bceloss, name).__doc__, name


def test_public_names_are_only_all_and_submodules():
    public = {n for n in vars(bceloss) if not n.startswith("_")}
    assert public - set(bceloss.__all__) <= {"cli"}  # the command line, once imported
    assert {"mindspore", "paddle"} <= set(vars(bceloss.compat))


def test_package_is_typed():
    from importlib.resources import files

    assert files("bceloss").joinpath("py.typed").is_file()


@pytest.mark.parametrize("cls", [bceloss.BCELoss, bceloss.BCEWithLogitsLoss])
def test_classes_call_their_functional_form(cls):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, (4, 3))
    y = rng.random((4, 3))
    w = rng.random(3)
    fn = (
        bceloss.binary_cross_entropy
        if cls is bceloss.BCELoss
        else bceloss.binary_cross_entropy_with_logits
    )
    for reduction in ("none", "mean", "sum"):
        np.testing.assert_array_equal(cls(w, reduction)(x, y), fn(x, y, w, reduction))
    assert cls().reduction == "mean"
    assert cls().weight is None
    assert repr(cls(reduction="sum")) == f"{cls.__name__}(reduction='sum')"


def test_pos_weight_on_the_class():
    x = np.array([[0.0, 0.0]])
    y = np.array([[1.0, 1.0]])
    loss = bceloss.BCEWithLogitsLoss(reduction="none", pos_weight=np.array([1.0, 3.0]))
    np.testing.assert_allclose(loss(x, y), [[np.log(2), 3 * np.log(2)]], rtol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scalar_results_are_0d_arrays(reduction):
    got = bceloss.binary_cross_entropy_with_logits(np.zeros(3), np.ones(3), reduction=reduction)
    assert type(got) is np.ndarray
    assert got.ndim == 0
