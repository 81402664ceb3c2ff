"""A model's own input standardisation (``MLP(standardize=True)``): learned from the first fit's
data in float64 chunks, applied to every input afterwards, saved with the model."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import gpunet as gn
from gpunet import scaling as scaling_module
from gpunet.data import Standardizer
from gpunet.scaling import InputScaling

FIT = dict(epochs=4, batch_size=16, lr=0.05, progress=False)


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    # features on wildly different scales, one far from zero, one constant
    X = rng.normal(size=(n, 4)) * [1.0, 1000.0, 1e-3, 0.0] + [5.0, 1e6, 0.0, 7.0]
    y = ((X[:, 0] > 5) ^ (X[:, 1] > 1e6)).astype(np.int64)
    return X, y


def test_learned_values_match_numpy_in_chunks(monkeypatch):
    X, _ = _data(n=1001)
    monkeypatch.setattr(scaling_module, "_CHUNK_ELEMENTS", 4 * 37)    # 37 rows a chunk, a short last one
    learned = InputScaling.learn(np.asfortranarray(X))
    np.testing.assert_allclose(learned.mean, X.mean(axis=0), rtol=1e-13, atol=1e-12)
    std = X.std(axis=0)
    np.testing.assert_allclose(learned.scale[:3], std[:3], rtol=1e-10)
    assert learned.scale[3] == 1.0                      # constant feature: maps to zero
    # float32 input is accumulated in float64
    learned32 = InputScaling.learn(X.astype(np.float32))
    np.testing.assert_allclose(learned32.mean, X.astype(np.float32).astype(np.float64).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_on_raw_data_is_the_fit_on_standardised_data(dtype):
    X, y = _data()
    Xv, yv = _data(n=80, seed=1)
    net = gn.MLP([4, 12, 2], seed=2, dtype=dtype, standardize=True)
    history = net.fit(X, y, validation_data=(Xv, yv), **FIT)
    scaler = Standardizer().fit(X)
    twin = gn.MLP([4, 12, 2], seed=2, dtype=dtype)
    twin_history = twin.fit(scaler.transform(X), y, validation_data=(scaler.transform(Xv), yv), **FIT)
    np.testing.assert_array_equal(net.input_scaling.mean, scaler.mean_)
    np.testing.assert_array_equal(net.input_scaling.scale, scaler.scale_)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))
    assert history["val_loss"] == twin_history["val_loss"]
    np.testing.assert_array_equal(net.predict_proba(Xv), twin.predict_proba(scaler.transform(Xv)))
    np.testing.assert_array_equal(gn.to_numpy(net.forward(Xv)), gn.to_numpy(twin.forward(scaler.transform(Xv))))
    assert net.score(Xv, yv) == twin.score(scaler.transform(Xv), yv)
    assert net.loss(Xv, yv) == twin.loss(scaler.transform(Xv), yv)


def test_a_later_fit_keeps_the_scaling():
    X, y = _data()
    net = gn.MLP([4, 12, 2], seed=2, standardize=True)
    net.fit(X, y, **FIT)
    first = net.input_scaling
    net.fit(X * 3 + 1, y, **FIT)
    assert net.input_scaling is first


def test_scaling_survives_save_load_pickle_and_copy(tmp_path):
    X, y = _data()
    net = gn.MLP([4, 12, 2], seed=2, standardize=True)
    net.fit(X, y, **FIT)
    path = tmp_path / "scaled.npz"
    net.save(path)
    for other in (gn.MLP.load(path), pickle.loads(pickle.dumps(net)), net.copy()):
        assert other.standardize and other.input_scaling == net.input_scaling
        np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))


def test_dataframe_columns_are_scaled_by_name():
    pd = pytest.importorskip("pandas", reason="pandas is needed for DataFrame inputs")
    X, y = _data()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    net = gn.MLP([4, 12, 2], seed=2, standardize=True)
    net.fit(frame, y, **FIT)
    np.testing.assert_array_equal(net.predict_proba(frame[["d", "b", "a", "c"]]), net.predict_proba(X))


def test_a_refused_fit_learns_nothing():
    X, y = _data()
    net = gn.MLP([4, 12, 2], seed=2, standardize=True)
    with pytest.raises(ValueError, match="labels in"):
        net.fit(X, y + 5, **FIT)
    assert net.input_scaling is None
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.fit(bad, y, **FIT)
    assert net.input_scaling is None


def test_values_past_float32_once_scaled_are_refused():
    net = gn.MLP([2, 3], input_scaling={"mean": [0.0, 0.0], "scale": [1.0, 1e-300]})
    with pytest.raises(ValueError, match="beyond the float32 range once standardised"):
        net.predict(np.ones((2, 2)))


@pytest.mark.parametrize("value, error, match", [
    ({"mean": [0.0], "scale": [1.0, 1.0]}, ValueError, "one mean and one scale per feature"),
    ({"mean": [0.0, 0.0], "scale": [1.0, 0.0]}, ValueError, "scale must be positive"),
    ({"mean": [np.nan, 0.0], "scale": [1.0, 1.0]}, ValueError, "must be finite"),
    ({"mean": [0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0]}, ValueError, "for 3 features, the network has 2"),
    ({"mean": [0.0, 0.0]}, TypeError, "dict with 'mean' and 'scale'"),
    ([0.0, 1.0], TypeError, "dict with 'mean' and 'scale'"),
])
def test_bad_input_scaling_is_refused(value, error, match):
    with pytest.raises(error, match=match):
        gn.MLP([2, 3], input_scaling=value)


def test_given_scaling_implies_standardize():
    net = gn.MLP([2, 3], input_scaling=InputScaling([1.0, 2.0], [2.0, 4.0]))
    assert net.standardize
    X = np.array([[3.0, 6.0]])
    twin = gn.MLP([2, 3])
    twin.set_flat_params(gn.to_numpy(net.flat_params))
    np.testing.assert_array_equal(net.forward(X), twin.forward(np.array([[1.0, 1.0]])))
