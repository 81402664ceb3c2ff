"""Reproducibility: a seed fixes construction and training bit for bit, different seeds give
different runs, and nothing draws from the process-global random state."""
from __future__ import annotations

import random

import numpy as np
import pytest

import gpunet as gn
from gpunet.init import INITIALIZERS


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(50, 5))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int) + (X[:, 2] > 0.5).astype(int)
    return X, y


def raw_params(net):
    return gn.to_numpy(net.flat_params).tobytes()


@pytest.mark.parametrize("init", list(INITIALIZERS))
def test_same_seed_gives_bitwise_identical_initial_params(init, backend, dtype):
    a = gn.MLP([5, 7, 4, 3], init=init, dtype=dtype, seed=11)
    b = gn.MLP([5, 7, 4, 3], init=init, dtype=dtype, seed=11)
    assert raw_params(a) == raw_params(b)
    c = gn.MLP([5, 7, 4, 3], init=init, dtype=dtype, seed=12)
    assert not np.array_equal(gn.to_numpy(a.flat_params), gn.to_numpy(c.flat_params))


def test_initial_params_do_not_depend_on_prior_models(dtype):
    with gn.use_backend("numpy"):
        first = gn.MLP([6, 5, 2], dtype=dtype, seed=3)
        gn.MLP([6, 5, 2], dtype=dtype, seed=99)           # another model in between
        again = gn.MLP([6, 5, 2], dtype=dtype, seed=3)
    assert raw_params(first) == raw_params(again)


@pytest.mark.gpu
def test_initial_params_are_the_same_on_every_backend(dtype):
    # initialisation draws on the host, so a seed means the same network on CPU and GPU
    with gn.use_backend("numpy"):
        cpu = raw_params(gn.MLP([6, 5, 2], dtype=dtype, seed=3))
    with gn.use_backend("cupy"):
        gpu = raw_params(gn.MLP([6, 5, 2], dtype=dtype, seed=3))
    assert cpu == gpu


def test_float32_init_is_the_float64_init_rounded():
    p32 = gn.to_numpy(gn.MLP([5, 9, 3], dtype="float32", seed=5).flat_params)
    p64 = gn.to_numpy(gn.MLP([5, 9, 3], dtype="float64", seed=5).flat_params)
    np.testing.assert_array_equal(p32, p64.astype(np.float32))


@pytest.mark.parametrize("batch_size, momentum, nesterov", [(1, 0.0, False), (8, 0.9, False), (8, 0.9, True),
                                                            (None, 0.5, False)])
def test_same_seed_gives_bitwise_identical_training(batch_size, momentum, nesterov, backend, dtype):
    X, y = make_data()
    runs = []
    for _ in range(2):
        net = gn.MLP([5, 8, 3], activation="relu", weight_decay=1e-3, dtype=dtype, seed=21)
        history = net.fit(X, y, epochs=3, batch_size=batch_size, lr=0.05, momentum=momentum,
                          nesterov=nesterov, clip_norm=5.0, progress=False)
        runs.append((raw_params(net), history["loss"], history["accuracy"]))
    assert runs[0] == runs[1]


def test_different_seeds_shuffle_differently(backend):
    X, y = make_data()
    start = gn.to_numpy(gn.MLP([5, 8, 3], dtype="float64", seed=0).flat_params)
    finals = []
    for seed in (1, 2):
        net = gn.MLP([5, 8, 3], dtype="float64", seed=seed)
        net.set_flat_params(start)                  # same start: only the shuffling differs
        net.fit(X, y, epochs=2, batch_size=4, lr=0.05, progress=False)
        finals.append(gn.to_numpy(net.flat_params))
    assert not np.array_equal(finals[0], finals[1])
    # and without shuffling the seed no longer matters
    finals = []
    for seed in (1, 2):
        net = gn.MLP([5, 8, 3], dtype="float64", seed=seed)
        net.set_flat_params(start)
        net.fit(X, y, epochs=2, batch_size=4, lr=0.05, shuffle=False, progress=False)
        finals.append(raw_params(net))
    assert finals[0] == finals[1]


def test_unseeded_models_differ():
    a, b = gn.MLP([4, 6, 2]), gn.MLP([4, 6, 2])
    assert not np.array_equal(gn.to_numpy(a.flat_params), gn.to_numpy(b.flat_params))


@pytest.mark.parametrize("seed", [None, 0])
def test_global_random_state_is_not_consumed(seed, backend):
    X, y = make_data()
    np.random.seed(1234)
    random.seed(1234)
    np_state, py_state = np.random.get_state(), random.getstate()
    net = gn.MLP([5, 8, 3], seed=seed)
    net.fit(X, y, epochs=2, batch_size=7, lr=0.05, momentum=0.9, progress=False)
    net.predict(X)
    net.loss_and_grad(X, y)
    gn.gradcheck(gn.MLP([5, 3], dtype="float64", seed=seed), X[:4], y[:4], max_params=5)
    after_np, after_py = np.random.get_state(), random.getstate()
    assert after_np[0] == np_state[0] and np.array_equal(after_np[1], np_state[1]) and after_np[2:] == np_state[2:]
    assert after_py == py_state


def test_loss_and_grad_is_repeatable_across_batch_sizes(backend, dtype, rng):
    """Workspace buffers are reused between calls: no state may leak from one call into the next."""
    X, y = make_data()
    net = gn.MLP([5, 8, 6, 3], activation="tanh", weight_decay=0.01, dtype=dtype, seed=2)
    first_loss, first_grads = net.loss_and_grad(X[:10], y[:10])
    first = [gn.to_numpy(g).copy() for g in first_grads]
    for n in (7, 50, 1, 3, 11, 13):                 # more shapes than the workspace cache keeps
        net.loss_and_grad(X[:n], y[:n])
        net.predict(X[:n])
    again_loss, again_grads = net.loss_and_grad(X[:10], y[:10])
    assert again_loss == first_loss
    for a, b in zip(first, again_grads):
        assert a.tobytes() == gn.to_numpy(b).tobytes()
    # the returned gradients are copies: a later call does not overwrite them
    for a, b in zip(first, first_grads):
        assert a.tobytes() == gn.to_numpy(b).tobytes()


def test_gradcheck_leaves_the_model_unchanged(rng):
    X, y = make_data()
    net = gn.MLP([5, 4, 3], dtype="float32", seed=0)
    before = raw_params(net)
    gn.gradcheck(net, X[:5], y[:5])
    assert raw_params(net) == before
