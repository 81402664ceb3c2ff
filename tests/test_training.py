"""The fit loop: accuracy on real data, every batching mode, the optimizer variants against a
hand-rolled loop over ``loss_and_grad``, clipping, validation, history, divergence handling,
and the prediction API."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from gpunet.data import load_digits, make_regression
from gpunet.optim import Adam


def blobs(rng, n_per_class=30, k=3):
    centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])[:k]
    X = np.concatenate([c + 0.6 * rng.normal(size=(n_per_class, 2)) for c in centers])
    y = np.repeat(np.arange(k), n_per_class)
    return X, y


def flat(net):
    return gn.to_numpy(net.flat_params).copy()


# ---- real data ---------------------------------------------------------------------------
def test_digits_default_recipe_reaches_97_percent(backend):
    d = load_digits()
    net = gn.MLP([64, 256, 10], activation="relu", weight_decay=1e-3, seed=0)
    history = net.fit(d.X_train, d.y_train, epochs=40, batch_size=32, lr=0.02, momentum=0.9, progress=False)
    assert net.score(d.X_test, d.y_test) >= 0.97
    assert history["accuracy"][-1] > 0.99
    assert history["loss"][-1] < history["loss"][0] / 10


def test_regression_reaches_good_r2(backend):
    d = make_regression()
    net = gn.MLP([d.n_features, 64, 64, 1], activation="tanh", output="identity", loss="mse", seed=0)
    history = net.fit(d.X_train, d.y_train, epochs=60, batch_size=32, lr=0.02, momentum=0.9,
                      validation_data=(d.X_test, d.y_test), progress=False)
    assert net.score(d.X_test, d.y_test) > 0.93
    assert set(history) >= {"loss", "r2", "val_loss", "val_r2", "time"}
    assert history["val_r2"][-1] == pytest.approx(net.score(d.X_test, d.y_test), rel=1e-6)
    assert history["loss"][-1] < history["loss"][0]


# ---- batching modes ----------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 16, None], ids=["per_example", "minibatch", "full_batch"])
def test_every_batching_mode_reduces_the_loss(batch_size, backend, dtype, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 8, 3], activation="tanh", dtype=dtype, seed=3)
    before = net.loss(X, y)
    epochs = 5 if batch_size == 1 else 40
    history = net.fit(X, y, epochs=epochs, batch_size=batch_size, lr=0.1, progress=False)
    after = net.loss(X, y)
    assert after < 0.5 * before
    assert history["loss"][-1] < history["loss"][0]
    assert net.score(X, y) > 0.9


def test_minibatches_are_redrawn_each_epoch_and_cover_every_example(backend, rng, monkeypatch):
    X, y = blobs(rng, n_per_class=7)          # 21 examples: batches of 5, 5, 5, 5, 1
    net = gn.MLP([2, 4, 3], seed=0)
    seen = []
    original = backend.gather_rows

    def recording_gather_rows(idx, srcs, outs):
        seen.append(gn.to_numpy(idx).copy())
        assert len(srcs) == 2        # features and targets, gathered together with the same indices
        return original(idx, srcs, outs)

    monkeypatch.setattr(backend, "gather_rows", recording_gather_rows)
    net.fit(X, y, epochs=3, batch_size=5, lr=0.01, progress=False)
    assert [len(b) for b in seen] == [5, 5, 5, 5, 1] * 3
    orders = [np.concatenate(seen[e * 5:(e + 1) * 5]) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(21))     # each example exactly once per epoch
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_shuffle_false_walks_the_data_in_order(backend, rng, monkeypatch):
    X, y = blobs(rng, n_per_class=3)
    net = gn.MLP([2, 3], seed=0)
    seen = []
    original = backend.gather_rows
    monkeypatch.setattr(backend, "gather_rows",
                        lambda idx, srcs, outs: (seen.append(gn.to_numpy(idx).copy()), original(idx, srcs, outs))[1])
    net.fit(X, y, epochs=2, batch_size=4, lr=0.01, shuffle=False, progress=False)
    assert [b.tolist() for b in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]] * 2


# ---- the optimizer inside fit, against a hand-rolled loop ---------------------------------
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.7, True)],
                         ids=["sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_fit_matches_hand_rolled_sgd(momentum, nesterov, batch_size, backend, rng):
    X, y = blobs(rng, n_per_class=4)          # 12 examples
    lr, wd, epochs = 0.3, 0.01, 3
    net = gn.MLP([2, 5, 3], activation="tanh", weight_decay=wd, dtype="float64", seed=7)
    reference = gn.MLP([2, 5, 3], activation="tanh", weight_decay=wd, dtype="float64", seed=7)
    theta = flat(reference)
    velocity = np.zeros_like(theta)
    bs = len(X) if batch_size is None else batch_size
    for _ in range(epochs):
        for start in range(0, len(X), bs):
            reference.set_flat_params(theta)
            _, grads = reference.loss_and_grad(X[start:start + bs], y[start:start + bs])
            # loss_and_grad includes lambda * W, as SGD's decay term does; flatten in buffer order
            g = np.concatenate([gn.to_numpy(p).ravel() for p in grads[0::2] + grads[1::2]])
            velocity = momentum * velocity + g
            theta = theta - lr * ((g + momentum * velocity) if nesterov else velocity)
    net.fit(X, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
            shuffle=False, progress=False)
    np.testing.assert_allclose(flat(net), theta, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum, nesterov", [(0.9, False), (0.9, True)], ids=["momentum", "nesterov"])
def test_momentum_variants_train(momentum, nesterov, backend, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 8, 3], activation="relu", seed=1)
    before = net.loss(X, y)
    net.fit(X, y, epochs=20, batch_size=16, lr=0.02, momentum=momentum, nesterov=nesterov, progress=False)
    assert net.loss(X, y) < 0.3 * before


def test_nesterov_differs_from_plain_momentum(backend, rng):
    X, y = blobs(rng)
    runs = []
    for nesterov in (False, True):
        net = gn.MLP([2, 8, 3], seed=1)
        net.fit(X, y, epochs=2, batch_size=16, lr=0.05, momentum=0.9, nesterov=nesterov, progress=False)
        runs.append(flat(net))
    assert not np.allclose(runs[0], runs[1])


# ---- clipping ------------------------------------------------------------------------------
@pytest.mark.parametrize("clip_norm", [1e-3, 0.05, 1e6])
def test_clip_norm_bounds_the_first_step(clip_norm, backend, dtype, rng):
    X, y = blobs(rng)
    lr = 0.5
    net = gn.MLP([2, 16, 3], seed=2, dtype=dtype)
    before = flat(net).astype(np.float64)
    _, grads = net.loss_and_grad(X, y)
    g = np.concatenate([gn.to_numpy(p).ravel() for p in grads[0::2] + grads[1::2]]).astype(np.float64)
    gnorm = np.linalg.norm(g)
    net.fit(X, y, epochs=1, batch_size=None, lr=lr, clip_norm=clip_norm, progress=False)
    step = flat(net).astype(np.float64) - before
    rel = 1e-4 if dtype == "float32" else 1e-9
    assert np.linalg.norm(step) <= lr * clip_norm * (1 + rel)
    if gnorm > clip_norm:
        # clipped: the step has exactly the norm lr * clip_norm, along -g
        assert np.linalg.norm(step) == pytest.approx(lr * clip_norm, rel=rel)
        np.testing.assert_allclose(step, -lr * clip_norm * g / gnorm, rtol=1e-3, atol=lr * clip_norm * 1e-4)
    else:
        np.testing.assert_allclose(step, -lr * g, rtol=1e-3, atol=1e-7)
    assert (clip_norm < 1) == (gnorm > clip_norm)    # the cases do exercise both branches


# ---- validation data and history ----------------------------------------------------------
def test_validation_data_and_history(backend, rng):
    X, y = blobs(rng)
    Xv, yv = blobs(np.random.default_rng(99), n_per_class=10)
    net = gn.MLP([2, 8, 3], seed=0)
    history = net.fit(X, y, epochs=7, batch_size=10, lr=0.05, validation_data=(Xv, yv), progress=False)
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "time"}
    assert history.epochs == 7
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "time"):
        assert len(history[key]) == 7, key
        assert all(np.isfinite(v) for v in history[key])
    # the last record was taken with the final parameters (no weight decay here)
    assert history["val_loss"][-1] == pytest.approx(net.loss(Xv, yv), rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(net.score(Xv, yv))
    assert all(0.0 <= a <= 1.0 for a in history["accuracy"] + history["val_accuracy"])
    assert all(t >= 0 for t in history["time"])


def test_full_batch_history_records_the_loss_before_each_step(backend, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 6, 3], dtype="float64", seed=0)
    losses, accs = [], []
    probe = gn.MLP([2, 6, 3], dtype="float64", seed=0)
    for _ in range(3):
        losses.append(probe.loss(X, y))
        accs.append(probe.score(X, y))
        probe.fit(X, y, epochs=1, batch_size=None, lr=0.2, progress=False)
    history = net.fit(X, y, epochs=3, batch_size=None, lr=0.2, progress=False)
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-12)
    np.testing.assert_allclose(history["accuracy"], accs)


def test_zero_epochs_changes_nothing(backend, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 6, 3], seed=0)
    before = flat(net)
    history = net.fit(X, y, epochs=0, progress=False)
    assert history.epochs == 0 and history["loss"] == []
    np.testing.assert_array_equal(flat(net), before)


def test_one_hot_labels_train_like_integer_labels(backend, rng):
    X, y = blobs(rng)
    nets = [gn.MLP([2, 6, 3], dtype="float64", seed=0) for _ in range(2)]
    h1 = nets[0].fit(X, y, epochs=3, batch_size=8, lr=0.1, progress=False)
    h2 = nets[1].fit(X, np.eye(3)[y], epochs=3, batch_size=8, lr=0.1, progress=False)
    np.testing.assert_allclose(flat(nets[0]), flat(nets[1]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    np.testing.assert_allclose(h1["accuracy"], h2["accuracy"])


# ---- divergence ------------------------------------------------------------------------------
def test_divergence_on_the_first_step_keeps_the_initial_parameters(backend, rng):
    # inputs near float32's limit overflow the forward pass at once
    X = np.sign(rng.normal(size=(20, 8))) * 3e38
    y = rng.integers(0, 3, size=20)
    net = gn.MLP([8, 16, 3], seed=0)
    before = flat(net)
    with pytest.raises(gn.TrainingDiverged, match="non-finite"):
        net.fit(X, y, epochs=3, batch_size=None, lr=0.01, progress=False)
    np.testing.assert_array_equal(flat(net), before)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_absurd_learning_rate_raises_and_keeps_parameters_with_finite_outputs(momentum, backend, rng):
    X, y = blobs(rng)
    lr = 1e30
    # the first full-batch step is computed from a finite gradient; the step after it overflows.
    # A twin trained for exactly that one good step holds the parameters epoch 2 starts from:
    # finite, but 1e30 times a gradient, so the outputs overflow with them. The model then
    # keeps the parameters it had before the fit.
    twin = gn.MLP([2, 16, 3], seed=4)
    twin.fit(X, y, epochs=1, batch_size=None, lr=lr, momentum=momentum, progress=False)
    good = flat(twin)
    assert np.isfinite(good).all()
    with np.errstate(over="ignore", invalid="ignore"):
        overflowing = not np.isfinite(gn.to_numpy(twin.forward(X))).all()

    net = gn.MLP([2, 16, 3], seed=4)
    initial = flat(net)
    with pytest.raises(gn.TrainingDiverged) as excinfo:
        net.fit(X, y, epochs=10, batch_size=None, lr=lr, momentum=momentum, progress=False)
    assert isinstance(excinfo.value, FloatingPointError)
    assert "learning rate" in str(excinfo.value)
    if overflowing:
        assert "before this fit" in str(excinfo.value)
        np.testing.assert_array_equal(flat(net), initial)
    else:
        assert "at the start of epoch 2" in str(excinfo.value)
        np.testing.assert_array_equal(flat(net), good)
    assert np.isfinite(gn.to_numpy(net.forward(X))).all()


def test_divergence_mid_epoch_with_minibatches_leaves_finite_parameters(backend, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 16, 3], seed=4)
    with pytest.raises(gn.TrainingDiverged):
        net.fit(X, y, epochs=5, batch_size=8, lr=1e30, progress=False)
    assert np.isfinite(flat(net)).all()


def test_divergence_leaves_adams_step_count_at_the_steps_applied(backend, rng):
    """On the GPU the bad step and the rest of its epoch are skipped on the device, not
    refused: Adam's bias correction must not count them. NumPy refuses the bad step before
    the optimizer sees it, so its count is the reference."""
    X, y = blobs(rng)

    def diverge():
        opt = Adam(lr=1e30)     # the first step is finite; the next forward pass overflows
        net = gn.MLP([2, 16, 3], seed=4)
        with pytest.raises(gn.TrainingDiverged):
            net.fit(X, y, epochs=5, batch_size=8, optimizer=opt, progress=False)
        return opt.step_count

    counted = diverge()
    with gn.use_backend("numpy"):
        reference = diverge()
    assert counted == reference >= 1


# ---- prediction API -----------------------------------------------------------------------------
def test_classifier_predictions(backend, rng):
    X, y = blobs(rng)
    net = gn.MLP([2, 8, 3], seed=0)
    net.fit(X, y, epochs=30, batch_size=16, lr=0.1, progress=False)
    proba = net.predict_proba(X)
    labels = net.predict(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(X), 3) and proba.dtype == np.float32
    assert isinstance(labels, np.ndarray) and labels.shape == (len(X),) and labels.dtype.kind == "i"
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    np.testing.assert_allclose(gn.to_numpy(net.forward(X)), proba)
    assert net.score(X, y) == pytest.approx((labels == y).mean())
    assert net.score(X, np.eye(3)[y]) == net.score(X, y)
    # one example at a time agrees with the batch
    assert net.predict(X[5:6]).tolist() == [labels[5]]


def test_regressor_predictions(backend, rng):
    X = rng.normal(size=(40, 3))
    Y = np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1)
    net = gn.MLP([3, 8, 2], activation="tanh", output="identity", loss="mse", dtype="float64", seed=0)
    net.fit(X, Y, epochs=50, batch_size=8, lr=0.05, progress=False)
    pred = net.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == (40, 2)
    np.testing.assert_allclose(pred, gn.to_numpy(net.forward(X)))
    ss_res = ((Y - pred) ** 2).sum(axis=0)
    ss_tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    assert net.score(X, Y) == pytest.approx(float(np.mean(1 - ss_res / ss_tot)), rel=1e-12)
    assert net.score(X, Y) > 0.9
    with pytest.raises(TypeError):
        net.predict_proba(X)


def test_predict_handles_more_rows_than_one_inference_chunk(backend, rng):
    from gpunet import mlp
    X = rng.normal(size=(mlp._INFERENCE_CHUNK + 37, 4))
    net = gn.MLP([4, 5, 3], dtype="float64", seed=0)
    proba = net.predict_proba(X)
    assert proba.shape == (len(X), 3)
    # the chunked result equals the rows computed on their own
    tail = net.predict_proba(X[-37:])
    np.testing.assert_allclose(proba[-37:], tail, rtol=1e-12)
