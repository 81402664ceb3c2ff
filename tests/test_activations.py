"""Activation functions: values against the textbook formulas, derivatives read from the
output against the true derivative in z, parameter checks and config round trips."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from gpunet.activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, get_activation

ACTS = {
    "sigmoid": (gn.Sigmoid(), lambda z: 1 / (1 + np.exp(-z))),
    "sigmoid_c2_beta0.5": (gn.Sigmoid(2.0, 0.5), lambda z: 2.0 / (1 + np.exp(-0.5 * z))),
    "sigmoid_c0.5_beta3": (gn.Sigmoid(c=0.5, beta=3.0), lambda z: 0.5 / (1 + np.exp(-3.0 * z))),
    "tanh": (gn.Tanh(), np.tanh),
    "relu": (gn.ReLU(), lambda z: np.where(z > 0, z, 0.0)),
    "leaky_relu": (gn.LeakyReLU(), lambda z: np.where(z > 0, z, 0.01 * z)),
    "leaky_relu_0.25": (gn.LeakyReLU(0.25), lambda z: np.where(z > 0, z, 0.25 * z)),
    "leaky_relu_0": (gn.LeakyReLU(0.0), lambda z: np.where(z > 0, z, 0.0)),
    "identity": (gn.Identity(), lambda z: z),
}


def z_grid(rng):
    # random points kept away from the ReLU kink, so central differences are exact enough
    z = rng.uniform(-6, 6, size=(7, 13))
    z[np.abs(z) < 1e-3] = 0.5
    return z


@pytest.mark.parametrize("name", list(ACTS))
def test_forward_matches_formula(name, rng):
    act, formula = ACTS[name]
    z = z_grid(rng)
    np.testing.assert_allclose(act.forward(np, z), formula(z), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", list(ACTS))
def test_forward_in_place_and_out(name, rng):
    act, formula = ACTS[name]
    z = z_grid(rng)
    want = formula(z)
    out = np.empty_like(z)
    assert act.forward(np, z.copy(), out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-15)
    z_inplace = z.copy()
    act.forward(np, z_inplace, out=z_inplace)
    np.testing.assert_allclose(z_inplace, want, rtol=1e-14, atol=1e-15)
    # without out the input is left alone
    z_kept = z.copy()
    act.forward(np, z_kept)
    np.testing.assert_array_equal(z_kept, z)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ACTS))
def test_forward_keeps_dtype(name, dtype, rng):
    act, _ = ACTS[name]
    z = z_grid(rng).astype(dtype)
    assert act.forward(np, z).dtype == np.dtype(dtype)
    assert act.backward(np, z, act.forward(np, z)).dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", list(ACTS))
def test_derivative_from_output_matches_derivative_in_z(name, rng):
    act, formula = ACTS[name]
    z = z_grid(rng)
    h = 1e-6
    numeric = (formula(z + h) - formula(z - h)) / (2 * h)
    a = act.forward(np, z)
    np.testing.assert_allclose(act.derivative_from_output(np, a), numeric, rtol=1e-7, atol=1e-9)
    grad = rng.normal(size=z.shape)
    np.testing.assert_allclose(act.backward(np, grad, a), grad * numeric, rtol=1e-7, atol=1e-9)


def test_relu_derivative_is_zero_at_the_kink():
    # the convention (PyTorch's too): slope 0 where the output is exactly 0
    a = gn.ReLU().forward(np, np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(gn.ReLU().backward(np, np.ones((1, 3)), a), [[0.0, 0.0, 1.0]])


def test_softmax_forward_and_jacobian(rng):
    z = rng.normal(scale=3, size=(5, 4))
    a = gn.Softmax().forward(np, z)
    e = np.exp(z)
    np.testing.assert_allclose(a, e / e.sum(axis=1, keepdims=True), rtol=1e-13)
    # backward is the vector-Jacobian product with the numeric Jacobian of each row
    grad = rng.normal(size=z.shape)
    h = 1e-6
    for row in range(z.shape[0]):
        jac = np.empty((4, 4))
        for j in range(4):
            zp, zm = z[row:row + 1].copy(), z[row:row + 1].copy()
            zp[0, j] += h
            zm[0, j] -= h
            jac[:, j] = (gn.Softmax().forward(np, zp) - gn.Softmax().forward(np, zm))[0] / (2 * h)
        want = grad[row] @ jac
        np.testing.assert_allclose(gn.Softmax().backward(np, grad[row:row + 1], a[row:row + 1])[0], want,
                                   rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="Jacobian"):
        gn.Softmax().derivative_from_output(np, a)


@pytest.mark.parametrize("bad", [dict(c=0.0), dict(c=-1.0), dict(beta=0.0), dict(beta=-2.0),
                                 dict(c=float("nan")), dict(beta=float("inf"))])
def test_sigmoid_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        gn.Sigmoid(**bad)


@pytest.mark.parametrize("slope", [-0.1, 1.0, 1.5, float("nan")])
def test_leaky_relu_rejects_bad_slope(slope):
    with pytest.raises(ValueError):
        gn.LeakyReLU(slope)


@pytest.mark.parametrize("bad", ["0.1", None, True])
def test_activation_parameters_must_be_numbers(bad):
    with pytest.raises(TypeError):
        gn.LeakyReLU(bad)
    with pytest.raises(TypeError):
        gn.Sigmoid(c=bad)


@pytest.mark.parametrize("act", [gn.Sigmoid(), gn.Sigmoid(1.5, 0.25), gn.Tanh(), gn.ReLU(), gn.LeakyReLU(),
                                 gn.LeakyReLU(0.2), gn.Identity(), gn.Softmax()], ids=repr)
def test_config_round_trip(act):
    again = get_activation(act.config())
    assert again == act and type(again) is type(act)
    assert hash(again) == hash(act)


def test_names_resolve_to_default_parameters():
    assert get_activation("leaky_relu") == gn.LeakyReLU(0.01)
    assert get_activation("sigmoid") == gn.Sigmoid(1.0, 1.0)
    assert gn.LeakyReLU(0.2) != gn.LeakyReLU(0.3)
    assert gn.Sigmoid(2.0, 1.0) != gn.Sigmoid(1.0, 1.0)


def test_softmax_is_output_only_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="softmax"):
        get_activation("softmax", HIDDEN_ACTIVATIONS, "hidden activation")
    with pytest.raises(ValueError, match="relu"):
        get_activation("relu", OUTPUT_ACTIVATIONS, "output activation")
    with pytest.raises(ValueError, match="swish"):
        get_activation("swish")
    with pytest.raises(ValueError):
        get_activation({"name": "leaky_relu", "alpha": 0.1})
    with pytest.raises(TypeError):
        get_activation(3)


def test_mlp_uses_one_activation_per_hidden_layer(rng):
    hidden = [gn.Sigmoid(2.0, 0.5), "tanh", gn.LeakyReLU(0.2)]
    net = gn.MLP([3, 4, 5, 6, 2], activation=hidden, dtype="float64", seed=0)
    assert net.hidden_activations == [gn.Sigmoid(2.0, 0.5), gn.Tanh(), gn.LeakyReLU(0.2)]
    X = rng.normal(size=(4, 3))
    # the forward pass applies them in order
    h = X
    formulas = [lambda z: 2.0 / (1 + np.exp(-0.5 * z)), np.tanh, lambda z: np.where(z > 0, z, 0.2 * z)]
    for (w, b), f in zip(zip(net.params[0:6:2], net.params[1:6:2]), formulas):
        h = f(h @ gn.to_numpy(w) + gn.to_numpy(b))
    z = h @ gn.to_numpy(net.params[6]) + gn.to_numpy(net.params[7])
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(gn.to_numpy(net.forward(X)), p, rtol=1e-12)
