"""Per-example weights: a batch's loss is the weighted mean sum(w l) / sum(w), on every
backend, for every loss; unit weights change nothing, integer weights act as repeated
examples, zero weights as removed ones; bad weights are refused before the model changes."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn


def flat(net):
    return gn.to_numpy(net.flat_params).copy()


def _problem(rng, kind):
    X = rng.normal(size=(40, 5))
    if kind == "labels":
        return X, rng.integers(0, 3, size=40), dict(output="softmax", loss="cross_entropy")
    if kind == "one-hot":
        return X, np.eye(3)[rng.integers(0, 3, size=40)], dict(output="softmax", loss="cross_entropy")
    return X, rng.normal(size=(40, 3)), dict(output="sigmoid" if kind == "mse-sigmoid" else "identity", loss="mse")


KINDS = ["labels", "one-hot", "mse-identity", "mse-sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
def test_integer_weights_equal_repeated_examples(backend, rng, kind):
    X, y, head = _problem(rng, kind)
    w = rng.integers(0, 4, size=len(X))
    w[0] = 3
    repeated = np.repeat(np.arange(len(X)), w)
    weighted = gn.MLP([5, 8, 3], dtype="float64", seed=2, weight_decay=1e-3, **head)
    plain = gn.MLP([5, 8, 3], dtype="float64", seed=2, weight_decay=1e-3, **head)
    loss_w, grads_w = weighted.loss_and_grad(X, y, sample_weight=w)
    loss_r, grads_r = plain.loss_and_grad(X[repeated], y[repeated])
    assert loss_w == pytest.approx(loss_r, rel=1e-12)
    for a, b in zip(grads_w, grads_r):
        np.testing.assert_allclose(gn.to_numpy(a), gn.to_numpy(b), rtol=1e-10, atol=1e-14)
    # full-batch training sees the same batches, so the same trajectory
    hw = weighted.fit(X, y, epochs=4, batch_size=None, lr=0.1, progress=False, sample_weight=w)
    hr = plain.fit(X[repeated], y[repeated], epochs=4, batch_size=None, lr=0.1, progress=False)
    np.testing.assert_allclose(flat(weighted), flat(plain), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(hw["loss"], hr["loss"], rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_unit_weights_change_nothing_bit_for_bit(backend, rng, kind, dtype):
    X, y, head = _problem(rng, kind)
    nets = [gn.MLP([5, 8, 3], dtype=dtype, seed=3, **head) for _ in range(2)]
    h0 = nets[0].fit(X, y, epochs=3, batch_size=16, lr=0.05, momentum=0.9, progress=False)
    h1 = nets[1].fit(X, y, epochs=3, batch_size=16, lr=0.05, momentum=0.9, progress=False,
                     sample_weight=np.ones(len(X)))
    np.testing.assert_array_equal(flat(nets[0]), flat(nets[1]))
    if backend.name == "cupy" and head["loss"] == "mse":
        # weighted MSE takes the reference chain on the GPU; the kernel sums the loss in
        # double: the same gradient bits, the loss within float rounding
        np.testing.assert_allclose(h0["loss"], h1["loss"], rtol=1e-6 if dtype == "float32" else 1e-14)
    else:
        assert h0["loss"] == h1["loss"]


def test_huge_equal_weights_in_float32_train_as_no_weights(backend, rng):
    # 1e38 each: a batch's sum would overflow float32 if fit did not use their ratios only
    X, y, head = _problem(rng, "labels")
    nets = [gn.MLP([5, 8, 3], dtype="float32", seed=8, **head) for _ in range(2)]
    nets[0].fit(X, y, epochs=2, batch_size=8, lr=0.1, progress=False)
    nets[1].fit(X, y, epochs=2, batch_size=8, lr=0.1, progress=False, sample_weight=np.full(len(X), 1e38))
    np.testing.assert_array_equal(flat(nets[0]), flat(nets[1]))


def test_the_scale_of_the_weights_does_not_matter(backend, rng):
    X, y, head = _problem(rng, "labels")
    w = rng.random(len(X)) + 0.1
    net = gn.MLP([5, 8, 3], dtype="float64", seed=4, **head)
    loss_a, grads_a = net.loss_and_grad(X, y, sample_weight=w)
    loss_b, grads_b = net.loss_and_grad(X, y, sample_weight=1000 * w)
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(gn.to_numpy(a), gn.to_numpy(b), rtol=1e-10, atol=1e-15)


def test_zero_weights_remove_examples_and_a_zero_batch_adds_nothing(backend, rng):
    X, y, head = _problem(rng, "labels")
    w = np.ones(len(X))
    w[:10] = 0.0            # with batch_size 10 and no shuffling: the whole first batch
    kept = gn.MLP([5, 8, 3], dtype="float64", seed=5, **head)
    dropped = gn.MLP([5, 8, 3], dtype="float64", seed=5, **head)
    h = kept.fit(X, y, epochs=2, batch_size=10, lr=0.1, shuffle=False, progress=False, sample_weight=w)
    dropped.fit(X[10:], y[10:], epochs=2, batch_size=10, lr=0.1, shuffle=False, progress=False)
    np.testing.assert_allclose(flat(kept), flat(dropped), rtol=1e-12, atol=1e-14)
    assert np.isfinite(h["loss"]).all()


def test_weighted_gradient_matches_finite_differences(rng):
    X, y, head = _problem(rng, "labels")
    w = rng.random(len(X)) * 3
    net = gn.MLP([5, 6, 3], dtype="float64", seed=6, activation="tanh", weight_decay=1e-2, **head)
    _, grads = net.loss_and_grad(X, y, sample_weight=w)
    flat_grad = np.concatenate([gn.to_numpy(g).ravel() for g in grads[0::2] + grads[1::2]])
    params = flat(net)
    eps = 1e-6
    for i in rng.choice(params.size, size=25, replace=False):
        for sign, store in ((1, "plus"), (-1, "minus")):
            probe = params.copy()
            probe[i] += sign * eps
            net.set_flat_params(probe)
            value = net.loss_and_grad(X, y, sample_weight=w)[0]
            if store == "plus":
                plus = value
            else:
                minus = value
        numeric = (plus - minus) / (2 * eps)
        assert abs(numeric - flat_grad[i]) <= 1e-6 * max(1.0, abs(numeric)), (i, numeric, flat_grad[i])
    net.set_flat_params(params)


@pytest.mark.parametrize("weights, error, words", [
    (np.ones(39), ValueError, "40 examples but sample_weight has 39"),
    (np.ones((40, 1)), ValueError, "1-D"),
    (np.r_[-1.0, np.ones(39)], ValueError, "negative"),
    (np.r_[np.nan, np.ones(39)], ValueError, "NaN"),
    (np.zeros(40), ValueError, "all zeros"),
    (np.ones(40, dtype=bool), TypeError, "booleans"),
    (["a"] * 40, TypeError, "sample_weight"),
])
def test_bad_weights_are_named_and_leave_the_model_unchanged(backend, rng, weights, error, words):
    X, y, head = _problem(rng, "labels")
    net = gn.MLP([5, 8, 3], seed=7, **head)
    before = flat(net)
    with pytest.raises(error, match=words):
        net.fit(X, y, epochs=1, progress=False, sample_weight=weights)
    with pytest.raises(error, match=words):
        net.loss_and_grad(X, y, sample_weight=weights)
    np.testing.assert_array_equal(flat(net), before)
