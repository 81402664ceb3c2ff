"""The losses beside cross-entropy and MSE: binary cross-entropy with a sigmoid output (binary
and multilabel classification) and the Poisson deviance with an exp output. Their gradients
are checked with the others in test_gradients.py (finite differences, complex step, PyTorch),
their kernels in test_cupy_kernels.py; here: what they learn, what they predict, what they
refuse."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn


def multilabel(rng, n=400, d=8, k=3):
    X = rng.normal(size=(n, d))
    Y = (X[:, :k] + 0.3 * rng.normal(size=(n, k)) > 0).astype(np.float64)
    return X, Y


def test_multilabel_classification_learns_independent_labels(backend, rng):
    X, Y = multilabel(rng)
    net = gn.MLP([8, 32, 3], activation="tanh", output="sigmoid", loss="binary_cross_entropy", seed=0)
    history = net.fit(X, Y, epochs=40, batch_size=32, lr=0.1, momentum=0.9, progress=False)
    assert history["accuracy"][-1] > 0.8            # subset accuracy: all three labels right
    assert net.score(X, Y) == pytest.approx(history["accuracy"][-1], abs=0.05)
    labels, proba = net.predict(X), net.predict_proba(X)
    assert labels.shape == (400, 3) and labels.dtype.kind == "i" and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, (proba > 0.5).astype(int))
    assert not np.allclose(proba.sum(axis=1), 1.0)  # independent outputs, not a softmax


def test_binary_classification_with_one_output(backend, rng):
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    net = gn.MLP([4, 16, 1], output="sigmoid", loss="binary_cross_entropy", seed=1)
    net.fit(X, y, epochs=30, batch_size=30, lr=0.1, momentum=0.9, progress=False)
    pred = net.predict(X)
    assert pred.shape == (300,) and net.score(X, y) > 0.95
    assert net.predict_proba(X).shape == (300, 1)


def _poisson_glm(X, y, iters=50):
    """Maximum-likelihood Poisson regression with a log link by Newton's method."""
    A = np.hstack([X, np.ones((len(X), 1))])
    beta = np.zeros(A.shape[1])
    for _ in range(iters):
        mu = np.exp(A @ beta)
        beta += np.linalg.solve(A.T @ (mu[:, None] * A), A.T @ (y - mu))
    return beta


def test_poisson_without_hidden_layers_is_the_poisson_glm(rng):
    X = rng.uniform(-1, 1, size=(500, 2))
    y = rng.poisson(np.exp(0.8 * X[:, 0] - 0.5 * X[:, 1] + 0.3)).astype(np.float64)
    net = gn.MLP([2, 1], output="exp", loss="poisson", dtype="float64", seed=0)
    net.fit(X, y, epochs=3000, batch_size=None, lr=0.5, progress=False)
    beta = _poisson_glm(X, y)
    np.testing.assert_allclose(gn.to_numpy(net.flat_params), beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.predict(X)[:, 0], np.exp(np.hstack([X, np.ones((500, 1))]) @ beta), rtol=1e-5)


def test_poisson_loss_is_zero_at_a_perfect_fit():
    net = gn.MLP([1, 1], output="exp", loss="poisson", dtype="float64", seed=0)
    net.set_flat_params(np.array([0.0, np.log(3.0)]))      # predicts 3 everywhere
    assert net.loss(np.zeros((4, 1)), np.full(4, 3.0)) == pytest.approx(0.0, abs=1e-14)
    assert net.loss(np.zeros((4, 1)), np.zeros(4)) == pytest.approx(3.0)   # exp(z) - y z + y log y - y


@pytest.mark.parametrize("loss, output, match", [
    ("binary_cross_entropy", "softmax", "needs output='sigmoid'"),
    ("binary_cross_entropy", gn.Sigmoid(c=2.0), "needs output='sigmoid'"),
    ("poisson", "identity", "needs output='exp'"),
    ("cross_entropy", "sigmoid", "needs output='softmax'"),
])
def test_a_loss_refuses_an_output_that_is_not_its_link(loss, output, match):
    with pytest.raises(ValueError, match=match):
        gn.MLP([3, 2], output=output, loss=loss)


def test_targets_each_loss_refuses(rng):
    X = rng.normal(size=(5, 3))
    bce = gn.MLP([3, 2], output="sigmoid", loss="binary_cross_entropy", seed=0)
    with pytest.raises(ValueError, match=r"0/1 indicators or probabilities in \[0, 1\]"):
        bce.fit(X, np.full((5, 2), 2.0), epochs=1, progress=False)
    with pytest.raises(ValueError, match="has 3 columns but the network has 2 outputs"):
        bce.fit(X, np.zeros((5, 3)), epochs=1, progress=False)
    poisson = gn.MLP([3, 1], output="exp", loss="poisson", seed=0)
    with pytest.raises(ValueError, match="negative value"):
        poisson.fit(X, -np.ones(5), epochs=1, progress=False)


def test_binary_models_save_and_load(tmp_path, rng):
    X, Y = multilabel(rng, n=50)
    net = gn.MLP([8, 6, 3], output="sigmoid", loss="binary_cross_entropy", seed=2)
    net.save(tmp_path / "m.npz")
    loaded = gn.MLP.load(tmp_path / "m.npz")
    assert loaded.loss_fn.name == "binary_cross_entropy"
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
