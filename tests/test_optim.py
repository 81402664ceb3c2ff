"""Optimizers: each backend op agrees with an independent float64 implementation written here
(and with torch.optim when torch is importable), state and skip behave, bad settings are
refused by name, and every optimizer trains a small problem through ``fit``."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunet as gn
from gpunet.backend import NumpyBackend
from gpunet.optim import SGD, Adam, AdamHyper, AdamW, RMSprop, RMSpropHyper, make_optimizer

from conftest import tolerance

N_STEPS = 6
P, N_DECAY = 37, 29        # odd sizes; the first N_DECAY entries are "weights"


# ---- independent references: textbook form, float64, one parameter vector ------------------
def textbook_adam(theta, grads, *, lr, beta1, beta2, eps, l2, decoupled, n_decay, scale):
    """Kingma & Ba's algorithm 1 with bias-corrected m_hat, v_hat (AdamW: Loshchilov &
    Hutter's decoupled shrink), written per step from the paper rather than from gpunet."""
    theta = theta.astype(np.float64).copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    decays = np.arange(theta.size) < n_decay
    for t, grad in enumerate(grads, start=1):
        g = scale * grad.astype(np.float64) + np.where(decays, l2 * theta, 0.0)
        theta = np.where(decays, theta * (1 - lr * decoupled), theta)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def textbook_rmsprop(theta, grads, *, lr, alpha, eps, l2, momentum, centered, n_decay, scale):
    theta = theta.astype(np.float64).copy()
    mean_sq = np.zeros_like(theta)
    mean_g = np.zeros_like(theta)
    buf = np.zeros_like(theta)
    decays = np.arange(theta.size) < n_decay
    for grad in grads:
        g = scale * grad.astype(np.float64) + np.where(decays, l2 * theta, 0.0)
        mean_sq = alpha * mean_sq + (1 - alpha) * g * g
        if centered:
            mean_g = alpha * mean_g + (1 - alpha) * g
            rms = np.sqrt(mean_sq - mean_g ** 2)
        else:
            rms = np.sqrt(mean_sq)
        update = g / (rms + eps)
        if momentum:
            buf = momentum * buf + update
            update = buf
        theta = theta - lr * update
    return theta


def textbook_sgd(theta, grads, *, lr, momentum, nesterov, l2, n_decay, scale):
    theta = theta.astype(np.float64).copy()
    vel = np.zeros_like(theta)
    decays = np.arange(theta.size) < n_decay
    for t, grad in enumerate(grads):
        g = scale * grad.astype(np.float64) + np.where(decays, l2 * theta, 0.0)
        if momentum:
            vel = g if t == 0 else momentum * vel + g
            g = g + momentum * vel if nesterov else vel
        theta = theta - lr * g
    return theta


def run_gpunet(optimizer, backend, theta0, grads, *, l2, scale, dtype):
    xp = backend.xp
    params = backend.asarray(theta0.copy(), dtype=dtype)    # updated in place: never alias theta0
    scale_dev = xp.asarray(scale, dtype=dtype)       # a 0-d device array, as fit passes it
    for grad in grads:
        optimizer.step(backend, params, backend.asarray(grad, dtype=dtype), weight_decay=l2,
                       n_decay=N_DECAY, scale=scale_dev, skip=xp.zeros((), dtype=bool))
    return gn.to_numpy(params)


def draws(rng, dtype):
    """Initial parameters and N_STEPS fresh gradients, rounded to ``dtype`` so both sides start
    from the same numbers."""
    theta0 = rng.normal(size=P).astype(dtype)
    grads = [(rng.normal(size=P) * rng.choice([0.01, 1.0, 30.0], size=P)).astype(dtype)
             for _ in range(N_STEPS)]
    return theta0, grads


ADAM_CASES = [
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.0, l2=0.0, decoupled=False),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, wd=0.05, l2=0.0, decoupled=False),
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.0, l2=1e-2, decoupled=False),
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1, l2=0.0, decoupled=True),
    dict(lr=2e-2, betas=(0.5, 0.9), eps=1e-8, wd=0.3, l2=1e-3, decoupled=True),
]


@pytest.mark.parametrize("case", ADAM_CASES, ids=lambda c: f"{'adamw' if c['decoupled'] else 'adam'}-wd{c['wd']}-l2{c['l2']}")
def test_adam_matches_textbook(backend, dtype, rng, case):
    theta0, grads = draws(rng, dtype)
    cls = AdamW if case["decoupled"] else Adam
    opt = cls(lr=case["lr"], betas=case["betas"], eps=case["eps"], weight_decay=case["wd"])
    got = run_gpunet(opt, backend, theta0, grads, l2=case["l2"], scale=0.7, dtype=dtype)
    want = textbook_adam(theta0, grads, lr=case["lr"], beta1=case["betas"][0], beta2=case["betas"][1],
                         eps=case["eps"], l2=case["l2"] + (0.0 if case["decoupled"] else case["wd"]),
                         decoupled=case["wd"] if case["decoupled"] else 0.0, n_decay=N_DECAY,
                         scale=np.float64(np.asarray(0.7, dtype=dtype)))
    assert opt.step_count == N_STEPS
    np.testing.assert_allclose(got, want, **tolerance(dtype))


RMSPROP_CASES = [
    dict(lr=1e-2, alpha=0.99, eps=1e-8, wd=0.0, l2=0.0, momentum=0.0, centered=False),
    dict(lr=1e-3, alpha=0.9, eps=1e-6, wd=0.02, l2=0.01, momentum=0.0, centered=False),
    dict(lr=1e-3, alpha=0.99, eps=1e-8, wd=0.0, l2=0.0, momentum=0.9, centered=False),
    dict(lr=1e-3, alpha=0.95, eps=1e-8, wd=0.0, l2=0.0, momentum=0.0, centered=True),
    dict(lr=5e-3, alpha=0.9, eps=1e-7, wd=0.01, l2=0.0, momentum=0.5, centered=True),
]


@pytest.mark.parametrize("case", RMSPROP_CASES, ids=lambda c: f"mom{c['momentum']}-centered{c['centered']}-wd{c['wd']}")
def test_rmsprop_matches_textbook(backend, dtype, rng, case):
    theta0, grads = draws(rng, dtype)
    opt = RMSprop(lr=case["lr"], alpha=case["alpha"], eps=case["eps"], weight_decay=case["wd"],
                  momentum=case["momentum"], centered=case["centered"])
    got = run_gpunet(opt, backend, theta0, grads, l2=case["l2"], scale=1.3, dtype=dtype)
    want = textbook_rmsprop(theta0, grads, lr=case["lr"], alpha=case["alpha"], eps=case["eps"],
                            l2=case["l2"] + case["wd"], momentum=case["momentum"], centered=case["centered"],
                            n_decay=N_DECAY, scale=np.float64(np.asarray(1.3, dtype=dtype)))
    np.testing.assert_allclose(got, want, **tolerance(dtype))


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_textbook(backend, dtype, rng, momentum, nesterov):
    theta0, grads = draws(rng, dtype)
    opt = SGD(lr=0.01, momentum=momentum, nesterov=nesterov)
    got = run_gpunet(opt, backend, theta0, grads, l2=0.01, scale=0.5, dtype=dtype)
    want = textbook_sgd(theta0, grads, lr=0.01, momentum=momentum, nesterov=nesterov, l2=0.01,
                        n_decay=N_DECAY, scale=0.5)
    np.testing.assert_allclose(got, want, **tolerance(dtype))


# ---- torch.optim, when it is installed (never a dependency) ----------------------------------
def torch_run(make, theta0, grads, *, group_wd, scale):
    """Run a torch optimizer with two parameter groups (weights decayed, biases not)."""
    torch = pytest.importorskip("torch")
    dt = torch.float64 if theta0.dtype == np.float64 else torch.float32
    w = torch.tensor(theta0[:N_DECAY], dtype=dt, requires_grad=True)
    b = torch.tensor(theta0[N_DECAY:], dtype=dt, requires_grad=True)
    opt = make([{"params": [w], "weight_decay": group_wd}, {"params": [b], "weight_decay": 0.0}])
    for grad in grads:
        g = torch.tensor(grad, dtype=dt) * torch.tensor(scale, dtype=dt)
        w.grad, b.grad = g[:N_DECAY].clone(), g[N_DECAY:].clone()
        opt.step()
    return np.concatenate([w.detach().numpy(), b.detach().numpy()])


TORCH_TOL = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


@pytest.mark.parametrize("name", ["adam", "adam_l2", "adam_wd", "adamw", "rmsprop", "rmsprop_centered_momentum",
                                  "sgd_nesterov"])
def test_agrees_with_torch(backend, dtype, rng, name):
    torch = pytest.importorskip("torch")
    theta0, grads = draws(rng, dtype)
    scale = float(np.asarray(0.9, dtype=dtype))
    l2 = 0.0
    if name == "adam":
        ours = Adam(lr=1e-2, betas=(0.85, 0.995), eps=1e-7)
        theirs = lambda g: torch.optim.Adam(g, lr=1e-2, betas=(0.85, 0.995), eps=1e-7)  # noqa: E731
        wd = 0.0
    elif name == "adam_l2":      # the model's L2 lambda, coupled like torch's weight_decay
        ours = Adam(lr=1e-2)
        theirs = lambda g: torch.optim.Adam(g, lr=1e-2)  # noqa: E731
        wd = l2 = 0.03
    elif name == "adam_wd":      # Adam's own weight_decay, also coupled
        ours = Adam(lr=1e-2, weight_decay=0.03)
        theirs = lambda g: torch.optim.Adam(g, lr=1e-2)  # noqa: E731
        wd = 0.03
    elif name == "adamw":
        ours = AdamW(lr=1e-2, weight_decay=0.2)
        theirs = lambda g: torch.optim.AdamW(g, lr=1e-2)  # noqa: E731
        wd = 0.2
    elif name == "rmsprop":
        ours = RMSprop(lr=1e-3, weight_decay=0.01)
        theirs = lambda g: torch.optim.RMSprop(g, lr=1e-3)  # noqa: E731
        wd = 0.01
    elif name == "rmsprop_centered_momentum":
        ours = RMSprop(lr=1e-3, alpha=0.9, momentum=0.8, centered=True)
        theirs = lambda g: torch.optim.RMSprop(g, lr=1e-3, alpha=0.9, momentum=0.8, centered=True)  # noqa: E731
        wd = 0.0
    else:
        ours = SGD(lr=1e-2, momentum=0.9, nesterov=True)
        theirs = lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9, nesterov=True)  # noqa: E731
        wd = 0.0
    got = run_gpunet(ours, backend, theta0, grads, l2=l2, scale=scale, dtype=dtype)
    want = torch_run(theirs, theta0, grads, group_wd=wd, scale=scale)
    np.testing.assert_allclose(got, want, **TORCH_TOL[dtype])


# ---- the backend ops themselves ----------------------------------------------------------------
@pytest.mark.parametrize("op", ["adam", "rmsprop"])
def test_skip_flag_leaves_everything_unchanged(backend, rng, op):
    xp = backend.xp
    params = backend.asarray(rng.normal(size=P))
    before = gn.to_numpy(params).copy()
    grads = backend.asarray(rng.normal(size=P))
    state = [backend.asarray(np.abs(rng.normal(size=P))) for _ in range(3)]
    saved = [gn.to_numpy(s).copy() for s in state]
    skip = xp.ones((), dtype=bool)
    if op == "adam":
        backend.adam_update(params, grads, state[0], state[1],
                            AdamHyper(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                                      decoupled_weight_decay=0.1), step=3, n_decay=N_DECAY, scale=1.0, skip=skip)
    else:
        backend.rmsprop_update(params, grads, state[0], state[1], state[2],
                               RMSpropHyper(lr=0.1, alpha=0.9, eps=1e-8, momentum=0.9, centered=True, weight_decay=0.1),
                               n_decay=N_DECAY, scale=1.0, skip=skip)
    np.testing.assert_array_equal(gn.to_numpy(params), before)
    for s, old in zip(state, saved):
        np.testing.assert_array_equal(gn.to_numpy(s), old)


def test_biases_are_never_decayed():
    be = NumpyBackend()
    params = np.ones(P)
    grads = np.zeros(P)
    m, v = np.zeros(P), np.zeros(P)
    be.adam_update(params, grads, m, v, AdamHyper(lr=0.1, decoupled_weight_decay=0.5), step=1, n_decay=N_DECAY,
                   scale=1.0, skip=False)
    np.testing.assert_allclose(params[:N_DECAY], 0.95)
    np.testing.assert_array_equal(params[N_DECAY:], 1.0)


def test_adam_first_step_is_lr_times_sign():
    """Bias correction makes the first Adam step exactly lr * sign(g) (up to eps)."""
    be = NumpyBackend()
    g = np.array([3.0, -1e-3, 0.5])
    params = np.zeros(3)
    be.adam_update(params, g, np.zeros(3), np.zeros(3), AdamHyper(lr=0.01, eps=1e-12), step=1, n_decay=0,
                   scale=1.0, skip=False)
    np.testing.assert_allclose(params, -0.01 * np.sign(g), rtol=1e-8)


def test_state_restarts_when_parameters_change_shape(rng):
    be = NumpyBackend()
    opt = Adam(lr=0.01)
    for size in (5, 5, 8):
        opt.step(be, np.zeros(size), rng.normal(size=size), n_decay=size)
    assert opt.exp_avg.shape == (8,) and opt.step_count == 1
    opt.reset()
    assert opt.exp_avg is None and opt.step_count == 0


# ---- validation and construction by name ------------------------------------------------------
@pytest.mark.parametrize("make,error,words", [
    (lambda: Adam(lr=0.0), ValueError, "lr"),
    (lambda: Adam(lr="fast"), TypeError, "lr"),
    (lambda: Adam(betas=(0.9, 1.0)), ValueError, "beta2"),
    (lambda: Adam(betas=0.9), TypeError, "betas"),
    (lambda: Adam(eps=-1e-8), ValueError, "eps"),
    (lambda: AdamW(weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: Adam(lr=float("nan")), ValueError, "lr"),
    (lambda: RMSprop(alpha=1.0), ValueError, "alpha"),
    (lambda: RMSprop(momentum=1.5), ValueError, "momentum"),
    (lambda: RMSprop(centered="yes"), TypeError, "centered"),
    (lambda: make_optimizer("lbfgs"), ValueError, "unknown optimizer"),
    (lambda: make_optimizer("adam", momentum=0.9), TypeError, "momentum"),
    (lambda: make_optimizer(3), TypeError, "optimizer"),
])
def test_bad_settings_are_refused_by_name(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_make_optimizer_by_name():
    assert isinstance(make_optimizer("Adam"), Adam) and make_optimizer("adam").lr == 1e-3
    assert isinstance(make_optimizer("adamw", lr=0.1), AdamW) and make_optimizer("adamw").weight_decay == 0.01
    opt = make_optimizer("rmsprop", lr=0.02, momentum=0.5, centered=True)
    assert (opt.lr, opt.momentum, opt.centered) == (0.02, 0.5, True)
    assert make_optimizer("sgd", lr=0.3, momentum=0.9, nesterov=True).nesterov


def _blobs(rng, n=300):
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] ** 2 > 0.2).astype(int)
    return X, y


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.01), ("adamw", 0.01), ("rmsprop", 0.003)])
def test_every_optimizer_trains_through_fit_by_name(backend, optimizer, lr):
    X, y = _blobs(np.random.default_rng(1))
    net = gn.MLP([5, 32, 2], seed=0)
    history = net.fit(X, y, epochs=25, batch_size=32, lr=lr, optimizer=optimizer, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert net.score(X, y) > 0.9
    assert history["lr"] == [lr] * 25


def test_fit_refuses_momentum_for_adam():
    X, y = _blobs(np.random.default_rng(2), n=20)
    net = gn.MLP([5, 4, 2], seed=0)
    before = gn.to_numpy(net.flat_params).copy()
    with pytest.raises(ValueError, match="betas"):
        net.fit(X, y, optimizer="adam", momentum=0.9, progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        net.fit(X, y, optimizer="adagrad", progress=False)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), before)


def test_optimizer_object_state_carries_over_between_fits():
    X, y = _blobs(np.random.default_rng(3), n=64)
    net = gn.MLP([5, 8, 2], seed=0)
    opt = Adam(lr=0.01)
    net.fit(X, y, epochs=2, batch_size=16, optimizer=opt, progress=False)
    assert opt.step_count == 8
    net.fit(X, y, epochs=1, batch_size=16, optimizer=opt, progress=False)
    assert opt.step_count == 12


def test_adamw_decay_shrinks_weights_compared_with_adam():
    X, y = _blobs(np.random.default_rng(4))
    norms = {}
    for opt in (Adam(lr=0.01), AdamW(lr=0.01, weight_decay=0.5)):
        net = gn.MLP([5, 32, 2], seed=0)
        net.fit(X, y, epochs=20, batch_size=32, optimizer=opt, progress=False)
        norms[type(opt).__name__] = math.sqrt(sum(float((w ** 2).sum()) for w in net.weights))
    assert norms["AdamW"] < 0.8 * norms["Adam"]
