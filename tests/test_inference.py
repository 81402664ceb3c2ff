"""Inference results a user can trust: input whose arithmetic overflows the network is named,
not answered with NaN probabilities or label 0; and a model travels (copy, pickle, save/load)
with its parameters, its shuffling state and its backend."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import gpunet as gn


def _classifier(dtype="float32"):
    return gn.MLP([4, 16, 3], seed=0, dtype=dtype)


def _overflowing(dtype=np.float32):
    X = np.random.default_rng(1).standard_normal((12, 4)).astype(dtype)
    X[[2, 7]] = 3e38                          # finite inputs whose arithmetic overflows float32
    return X


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_inference_on_overflowing_rows_names_them(backend, method):
    net = _classifier()
    with pytest.raises(ValueError, match=r"not finite for 2 row\(s\) of X \(rows 2, 7\).*float32"):
        getattr(net, method)(_overflowing())


def test_score_on_overflowing_rows_names_them(backend):
    net = _classifier()
    with pytest.raises(ValueError, match=r"rows 2, 7"):
        net.score(_overflowing(), np.arange(12) % 3)


def test_regressor_predict_on_overflowing_rows_names_them(backend):
    net = gn.MLP([4, 16, 2], output="identity", loss="mse", seed=0)
    with pytest.raises(ValueError, match=r"rows 2, 7.*dtype='float64'"):
        net.predict(_overflowing())


def test_forward_returns_the_overflowing_rows_as_computed(backend):
    out = gn.to_numpy(_classifier().forward(_overflowing()))
    finite_rows = np.isfinite(out).all(axis=1)
    assert list(np.flatnonzero(~finite_rows)) == [2, 7]


def test_the_same_rows_are_fine_in_float64(backend):
    X = _overflowing()
    labels = _classifier("float64").predict(X.astype(np.float64))
    assert labels.shape == (12,)


def test_many_overflowing_rows_are_summarised():
    X = np.full((40, 4), 3e38, dtype=np.float32)
    with pytest.raises(ValueError, match=r"40 row\(s\) of X \(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\)"):
        _classifier().predict(X)


# ---- copies ----------------------------------------------------------------------------------------
def test_copy_keeps_parameters_and_backend_and_converts_dtype(backend):
    net = _classifier()
    twin = net.copy()
    assert twin is not net and twin.backend is net.backend and twin.config() == net.config()
    np.testing.assert_array_equal(gn.to_numpy(twin.flat_params), gn.to_numpy(net.flat_params))
    wide = net.copy(dtype="float64")
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(gn.to_numpy(wide.flat_params), gn.to_numpy(net.flat_params).astype(np.float64))
    twin.flat_params[...] = 0            # the copy owns its buffer
    assert np.any(gn.to_numpy(net.flat_params) != 0)


@pytest.mark.parametrize("clone", [lambda n: pickle.loads(pickle.dumps(n)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy_keep_parameters_and_the_shuffle_sequence(backend, clone):
    X = np.random.default_rng(2).standard_normal((30, 4))
    y = np.arange(30) % 3
    net = _classifier()
    net.fit(X, y, epochs=1, batch_size=8, progress=False)
    twin = clone(net)
    assert twin.backend.name == net.backend.name
    np.testing.assert_array_equal(twin.predict_proba(X), net.predict_proba(X))
    for model in (net, twin):            # both go on with the same shuffles
        model.fit(X, y, epochs=2, batch_size=8, progress=False)
    np.testing.assert_array_equal(gn.to_numpy(twin.flat_params), gn.to_numpy(net.flat_params))


def test_models_are_built_on_the_backend_asked_for():
    net = gn.MLP([3, 2], backend="numpy")
    assert net.backend.name == "numpy"
    with pytest.raises(ValueError, match="unknown backend"):
        gn.MLP([3, 2], backend="tpu")


def test_load_on_a_chosen_backend(tmp_path):
    net = _classifier()
    net.save(tmp_path / "m.npz")
    loaded = gn.MLP.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.backend.name == "numpy"
    np.testing.assert_array_equal(gn.to_numpy(loaded.flat_params), gn.to_numpy(net.flat_params))
