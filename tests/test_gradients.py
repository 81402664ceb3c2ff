"""Gradient correctness of ``MLP.loss_and_grad``.

Three independent lines of evidence:
- ``gn.gradcheck`` (central finite differences) over the whole activation x output/loss x depth
  x weight-decay matrix;
- a complex-step reference written here from the loss definitions in DESIGN.md (no gpunet code
  in it), which is exact to float64 rounding, so it catches errors far below what finite
  differences can see;
- an explicit hand-derived backward pass for one tiny network, and PyTorch autograd when torch
  is importable.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from conftest import tolerance

HIDDEN = {
    "sigmoid": "sigmoid",
    "scaled_sigmoid": gn.Sigmoid(c=1.7, beta=0.6),
    "tanh": "tanh",
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "leaky_relu_0.2": gn.LeakyReLU(0.2),
    "identity": "identity",
}

# (output activation, loss, target kind)
HEADS = {
    "softmax_xent_labels": ("softmax", "cross_entropy", "labels"),
    "softmax_xent_onehot": ("softmax", "cross_entropy", "onehot"),
    "softmax_xent_soft": ("softmax", "cross_entropy", "soft"),
    "softmax_mse": ("softmax", "mse", "real"),
    "sigmoid_mse": ("sigmoid", "mse", "real"),
    "tanh_mse": ("tanh", "mse", "real"),
    "identity_mse": ("identity", "mse", "real"),
    "exp_mse": ("exp", "mse", "real"),
    "sigmoid_bce_binary": ("sigmoid", "binary_cross_entropy", "binary"),
    "sigmoid_bce_soft": ("sigmoid", "binary_cross_entropy", "probs"),
    "exp_poisson": ("exp", "poisson", "counts"),
}


def make_targets(kind, rng, n, k):
    if kind == "labels":
        return rng.integers(0, k, size=n)
    if kind == "onehot":
        return np.eye(k)[rng.integers(0, k, size=n)]
    if kind == "soft":
        return rng.dirichlet(np.ones(k), size=n)
    if kind == "binary":
        return rng.integers(0, 2, size=(n, k)).astype(np.float64)
    if kind == "probs":
        return rng.uniform(size=(n, k))
    if kind == "counts":
        return rng.poisson(2.0, size=(n, k)).astype(np.float64)
    return rng.normal(size=(n, k))


def randomized_net(sizes, hidden, head, weight_decay, rng, dtype="float64", scale=0.7):
    """A net whose every parameter (biases included) is random: zero biases under ReLU can put
    a pre-activation exactly on the kink, where finite differences legitimately disagree."""
    output, loss, _ = head
    net = gn.MLP(sizes, activation=hidden, output=output, loss=loss,
                 weight_decay=weight_decay, dtype=dtype, seed=0)
    net.set_flat_params(rng.normal(scale=scale, size=net.n_params))
    return net


def matrix_cases():
    for depth in (0, 1, 2, 3):
        hidden_names = ["none"] if depth == 0 else list(HIDDEN)
        for hname in hidden_names:
            for head_name in HEADS:
                for wd in (0.0, 0.05):
                    yield pytest.param(depth, hname, head_name, wd, id=f"d{depth}-{hname}-{head_name}-wd{wd}")


def matrix_problem(depth, hidden_name, head_name, weight_decay, rng):
    """(net, X, y) of one matrix case: 4 inputs, ``depth`` hidden layers of 5, 3 outputs,
    every parameter randomised (so no pre-activation sits on a ReLU kink), 6 examples."""
    head = HEADS[head_name]
    sizes = [4] + [5] * depth + [3]
    hidden = [] if depth == 0 else HIDDEN[hidden_name]
    net = randomized_net(sizes, hidden, head, weight_decay, rng)
    X = rng.normal(size=(6, 4))
    return net, X, make_targets(head[2], rng, 6, 3)


@pytest.mark.parametrize("depth, hidden_name, head_name, weight_decay", list(matrix_cases()))
def test_gradcheck_matrix(depth, hidden_name, head_name, weight_decay, rng):
    net, X, y = matrix_problem(depth, hidden_name, head_name, weight_decay, rng)
    # eps=1e-5 (gradcheck's default, near the float64 optimum): chains of leaky slopes make
    # some true entries tiny, where rounding noise of the difference quotient is judged
    # against gradcheck's atol floor; correct gradients stay well below 1e-4, a wrong one
    # scores O(1) (see the test below).
    assert gn.gradcheck(net, X, y, eps=1e-5) < 1e-4


@pytest.mark.parametrize("depth, hidden_name, head_name, weight_decay", list(matrix_cases()))
def test_complex_step_matrix(depth, hidden_name, head_name, weight_decay, rng):
    """The same matrix against the exact complex-step reference, to float64 rounding."""
    net, X, y = matrix_problem(depth, hidden_name, head_name, weight_decay, rng)
    expected, expected_loss = complex_step_gradient(net, X, y)
    got, loss = flat_analytic(net, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("hidden", [
    ["relu", "tanh"],
    [gn.Sigmoid(2.0, 0.5), gn.LeakyReLU(0.3), "identity"],
    ["identity", "sigmoid", "relu"],
], ids=["relu-tanh", "ssig-leaky-id", "id-sig-relu"])
@pytest.mark.parametrize("head_name", ["softmax_xent_labels", "sigmoid_mse"])
def test_gradcheck_per_layer_activation_lists(hidden, head_name, rng):
    head = HEADS[head_name]
    sizes = [3] + [4] * len(hidden) + [2]
    net = randomized_net(sizes, hidden, head, 0.01, rng)
    X = rng.normal(size=(5, 3))
    y = make_targets(head[2], rng, 5, 2)
    assert gn.gradcheck(net, X, y, eps=1e-5) < 1e-4


def test_gradcheck_detects_a_wrong_gradient(rng, monkeypatch):
    """The check itself must be able to fail: break the bias gradient and expect a large error."""
    net = randomized_net([3, 4, 2], "tanh", HEADS["softmax_xent_labels"], 0.0, rng)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    be = gn.get_backend()
    original = type(be).bias_grad
    monkeypatch.setattr(type(be), "bias_grad", lambda self, delta, out=None: original(self, 2 * delta, out=out))
    assert gn.gradcheck(net, X, y) > 1e-2


@pytest.mark.parametrize("head_name", list(HEADS))
@pytest.mark.parametrize("hidden_name", list(HIDDEN))
def test_float32_gradient_matches_float64(hidden_name, head_name, backend, rng):
    head = HEADS[head_name]
    sizes = [6, 8, 7, 4]
    net64 = randomized_net(sizes, HIDDEN[hidden_name], head, 0.01, rng, dtype="float64")
    net32 = randomized_net(sizes, HIDDEN[hidden_name], head, 0.01, np.random.default_rng(0), dtype="float32")
    # the same parameters, rounded once to float32 and used by both nets
    theta = gn.to_numpy(net64.flat_params).astype(np.float32)
    net32.set_flat_params(theta)
    net64.set_flat_params(theta.astype(np.float64))
    X = rng.normal(size=(9, 6)).astype(np.float32)
    y = make_targets(head[2], rng, 9, 4)
    if head[2] != "labels":
        y = y.astype(np.float32).astype(np.float64)
        if head[2] in ("onehot", "soft"):
            y = y / y.sum(axis=1, keepdims=True)
    loss32, grads32 = net32.loss_and_grad(X, y)
    loss64, grads64 = net64.loss_and_grad(X.astype(np.float64), y)
    tol = tolerance("float32")
    assert loss32 == pytest.approx(loss64, rel=tol["rtol"], abs=tol["atol"])
    for g32, g64 in zip(grads32, grads64):
        g32, g64 = gn.to_numpy(g32), gn.to_numpy(g64)
        assert g32.dtype == np.float32 and g64.dtype == np.float64
        # float32 rounding accumulates through three layers: scale atol to the gradient size
        np.testing.assert_allclose(g32, g64, rtol=tol["rtol"],
                                   atol=tol["atol"] + 5e-6 * np.abs(g64).max())


# ---------------------------------------------------------------------------------------
# Complex-step reference: d/dtheta_i L = Im L(theta + i h e_i) / h, exact to rounding for
# any function built from analytic pieces. Everything below follows DESIGN.md's definitions.

def _reference_activation(spec, z):
    act = gn.activations.get_activation(spec) if not isinstance(spec, gn.activations.Activation) else spec
    name = act.name
    if name == "sigmoid":
        return act.c / (1.0 + np.exp(-act.beta * z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z.real > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z.real > 0, z, act.slope * z)
    if name == "identity":
        return z
    if name == "exp":
        return np.exp(z)
    if name == "softmax":
        e = np.exp(z - z.real.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise AssertionError(name)


def reference_loss(theta, net, X, y):
    """The loss of ``net``'s architecture at the flat parameters ``theta`` (any complex dtype),
    computed from the definitions; the flat layout is [W_1..W_L, b_1..b_L]."""
    sizes = net.sizes
    shapes = list(zip(sizes[:-1], sizes[1:]))
    weights, offset = [], 0
    for a, b in shapes:
        weights.append(theta[offset:offset + a * b].reshape(a, b))
        offset += a * b
    biases = []
    for _, b in shapes:
        biases.append(theta[offset:offset + b])
        offset += b
    acts = [*net.hidden_activations, net.output_activation]
    h = X.astype(theta.dtype)
    n = X.shape[0]
    for layer, (w, b, act) in enumerate(zip(weights, biases, acts)):
        z = h @ w + b
        if layer == len(weights) - 1 and net.loss_fn.name == "cross_entropy":
            zmax = z.real.max(axis=1, keepdims=True)
            logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
            target = np.eye(sizes[-1])[y] if y.ndim == 1 else y
            loss = -(target * logp).sum() / n
            break
        if layer == len(weights) - 1 and net.loss_fn.name == "binary_cross_entropy":
            target = y.reshape(n, -1)    # -[y log s(z) + (1 - y) log(1 - s(z))] = log(1 + e^z) - y z
            loss = (np.log(1.0 + np.exp(z)) - target * z).sum() / n
            break
        if layer == len(weights) - 1 and net.loss_fn.name == "poisson":
            target = y.reshape(n, -1)    # half the deviance: e^z - y z + y log y - y
            y_log_y = target * np.log(np.where(target > 0, target, 1.0))
            loss = (np.exp(z) - target * z + y_log_y - target).sum() / n
            break
        h = _reference_activation(act, z)
    else:
        diff = h - y.reshape(n, -1)
        loss = (diff * diff).sum() / (2 * n)    # squares, not |.|^2: keeps it analytic
    return loss + 0.5 * net.weight_decay * sum((w * w).sum() for w in weights)


def complex_step_gradient(net, X, y, h=1e-30):
    theta = gn.to_numpy(net.flat_params).astype(np.complex128)
    grad = np.empty(len(theta))
    for i in range(len(theta)):
        bumped = theta.copy()
        bumped[i] += 1j * h
        grad[i] = reference_loss(bumped, net, X, y).imag / h
    return grad, reference_loss(theta, net, X, y).real


def flat_analytic(net, X, y):
    loss, grads = net.loss_and_grad(X, y)
    ws = [gn.to_numpy(g).ravel() for g in grads[0::2]]
    bs = [gn.to_numpy(g).ravel() for g in grads[1::2]]
    return np.concatenate(ws + bs), loss


@pytest.mark.parametrize("head_name", list(HEADS))
@pytest.mark.parametrize("hidden", [
    ["tanh", gn.Sigmoid(1.5, 2.0)],
    ["relu", gn.LeakyReLU(0.1)],
    ["identity", "sigmoid"],
], ids=["tanh-ssig", "relu-leaky", "id-sig"])
def test_gradient_matches_complex_step_reference(hidden, head_name, backend, rng):
    head = HEADS[head_name]
    net = randomized_net([5, 6, 4, 3], hidden, head, 0.02, rng)
    X = rng.normal(size=(7, 5))
    y = make_targets(head[2], rng, 7, 3)
    expected, expected_loss = complex_step_gradient(net, X, y)
    got, loss = flat_analytic(net, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    # float64 rounding, relative to the gradient's scale
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------
# A hand-derived backward pass for one tiny net: tanh hidden layer, softmax + cross-entropy.

def test_gradient_matches_hand_written_backprop(backend, rng):
    n, d, hdim, k, lam = 6, 3, 4, 3, 0.1
    X = rng.normal(size=(n, d))
    y = rng.integers(0, k, size=n)
    W1, b1 = rng.normal(size=(d, hdim)), rng.normal(size=hdim)
    W2, b2 = rng.normal(size=(hdim, k)), rng.normal(size=k)

    # forward
    H = np.tanh(X @ W1 + b1)
    Z = H @ W2 + b2
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    loss = -np.log(P[np.arange(n), y]).mean() + 0.5 * lam * ((W1 ** 2).sum() + (W2 ** 2).sum())
    # backward: dL/dZ = (P - onehot)/n, then the chain rule by hand
    dZ = P.copy()
    dZ[np.arange(n), y] -= 1.0
    dZ /= n
    dW2 = H.T @ dZ + lam * W2
    db2 = dZ.sum(axis=0)
    dH = dZ @ W2.T
    dA = dH * (1.0 - H ** 2)
    dW1 = X.T @ dA + lam * W1
    db1 = dA.sum(axis=0)

    net = gn.MLP([d, hdim, k], activation="tanh", weight_decay=lam, dtype="float64", seed=0)
    for p, value in zip(net.params, (W1, b1, W2, b2)):
        p[...] = backend.asarray(value)
    got_loss, grads = net.loss_and_grad(X, y)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    for got, want in zip(grads, (dW1, db1, dW2, db2)):
        np.testing.assert_allclose(gn.to_numpy(got), want, **tolerance("float64"))


def test_gradient_matches_hand_written_backprop_mse_sigmoid(backend, rng):
    n, d, hdim, k = 5, 4, 3, 2
    X = rng.normal(size=(n, d))
    Y = rng.normal(size=(n, k))
    W1, b1 = rng.normal(size=(d, hdim)), rng.normal(size=hdim)
    W2, b2 = rng.normal(size=(hdim, k)), rng.normal(size=k)

    Z1 = X @ W1 + b1
    H = np.where(Z1 > 0, Z1, 0.05 * Z1)                  # leaky ReLU, slope 0.05
    A = 1.0 / (1.0 + np.exp(-(H @ W2 + b2)))             # sigmoid output
    loss = ((A - Y) ** 2).sum() / (2 * n)
    dZ2 = (A - Y) / n * A * (1 - A)
    dW2, db2 = H.T @ dZ2, dZ2.sum(axis=0)
    dZ1 = (dZ2 @ W2.T) * np.where(Z1 > 0, 1.0, 0.05)
    dW1, db1 = X.T @ dZ1, dZ1.sum(axis=0)

    net = gn.MLP([d, hdim, k], activation=gn.LeakyReLU(0.05), output="sigmoid", loss="mse",
                 dtype="float64", seed=0)
    for p, value in zip(net.params, (W1, b1, W2, b2)):
        p[...] = backend.asarray(value)
    got_loss, grads = net.loss_and_grad(X, Y)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    for got, want in zip(grads, (dW1, db1, dW2, db2)):
        np.testing.assert_allclose(gn.to_numpy(got), want, **tolerance("float64"))


TORCH_HIDDEN = ["tanh", "relu", "sigmoid", gn.LeakyReLU(0.2), "identity"]


@pytest.mark.parametrize("head_name", list(HEADS))
def test_gradient_matches_torch_autograd(head_name, rng):
    torch = pytest.importorskip("torch")
    head = HEADS[head_name]
    torch_act = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
                 "identity": lambda t: t}
    for trial in range(20):
        depth = int(rng.integers(1, 4))
        hidden = [TORCH_HIDDEN[i] for i in rng.integers(0, len(TORCH_HIDDEN), size=depth)]
        sizes = [int(s) for s in rng.integers(1, 7, size=depth + 1)] + [3]
        n = int(rng.integers(1, 9))
        wd = float(rng.choice([0.0, 0.03]))
        net = randomized_net(sizes, hidden, head, wd, rng)
        X = rng.normal(size=(n, sizes[0]))
        y = make_targets(head[2], rng, n, 3)

        params = [torch.tensor(gn.to_numpy(p), requires_grad=True) for p in net.params]
        h = torch.tensor(X)
        for layer in range(len(sizes) - 1):
            z = h @ params[2 * layer] + params[2 * layer + 1]
            if layer < depth:
                act = net.hidden_activations[layer]
                if act.name == "leaky_relu":
                    h = torch.nn.functional.leaky_relu(z, act.slope)
                else:
                    h = torch_act[act.name](z)
            else:
                h = z
        if head[1] == "cross_entropy":
            target = torch.tensor(y) if y.ndim == 1 else torch.tensor(y)
            loss = torch.nn.functional.cross_entropy(h, target)
        elif head[1] == "binary_cross_entropy":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(h, torch.tensor(y), reduction="sum") / n
        elif head[1] == "poisson":
            target = torch.tensor(y)
            # PyTorch's Poisson NLL without the constant y log y - y of the half deviance
            loss = torch.nn.functional.poisson_nll_loss(h, target, log_input=True, full=False, reduction="sum") / n
            loss = loss + float((np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0) - y).sum()) / n
        else:
            out = {"softmax": lambda t: torch.softmax(t, dim=1), "sigmoid": torch.sigmoid,
                   "tanh": torch.tanh, "identity": lambda t: t, "exp": torch.exp}[head[0]](h)
            loss = ((out - torch.tensor(y)) ** 2).sum() / (2 * n)
        loss = loss + 0.5 * wd * sum((p ** 2).sum() for p in params[0::2])
        loss.backward()

        got_loss, grads = net.loss_and_grad(X, y)
        assert got_loss == pytest.approx(loss.item(), rel=1e-12, abs=1e-14)
        for got, p in zip(grads, params):
            want = p.grad.numpy()
            np.testing.assert_allclose(gn.to_numpy(got), want, rtol=1e-9,
                                       atol=1e-12 * max(1.0, np.abs(want).max()))
