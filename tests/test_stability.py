"""Numerical stability at extreme but valid inputs: finite losses and gradients, saturated
outputs that stay in range, and no overflow/invalid warnings (any warning fails these tests)."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

import gpunet as gn

pytestmark = pytest.mark.filterwarnings("error")

# the largest logit magnitudes each dtype must handle (DESIGN/issue: +-1e4, and 1e30 in float64)
HUGE = {"float32": [1e4, 1e30], "float64": [1e4, 1e30, 1e150]}
HUGE_CASES = [(dt, v) for dt, vs in HUGE.items() for v in vs]


@contextlib.contextmanager
def strict_floats():
    """Overflow, invalid and divide-by-zero raise instead of warning (underflow to 0 is fine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            yield


def extreme_logits(big, dtype):
    """Rows whose max is at column 0 (+big), a column at -big, the rest moderate."""
    z = np.array([[big, -big, 0.0, 1.0],
                  [big, -big, -3.0, 2.0],
                  [big, big / 2, -big, 0.5]], dtype=np.float64)
    return z.astype(dtype)


@pytest.mark.parametrize("dtype, big", HUGE_CASES)
def test_softmax_xent_at_huge_logits(dtype, big, backend):
    z = extreme_logits(big, dtype)
    n = z.shape[0]
    xp = backend.xp
    with strict_floats():
        # correct labels (the max): loss ~ 0 and gradient ~ 0
        grad = backend.empty(z.shape, dtype)
        loss = float(backend.softmax_xent(backend.asarray(z.copy()), backend.asarray(np.zeros(n, dtype=np.int64)), grad))
        assert np.isfinite(loss) and 0.0 <= loss < 1e-6
        assert backend.all_finite(grad)
        assert float(xp.abs(grad).max()) < 1e-6

        # the most wrong label (-big): loss ~ the margin max - z_y = 2 big, gradient (e_max - e_y)/N
        labels = np.array([1, 1, 2])
        loss = float(backend.softmax_xent(backend.asarray(z.copy()), backend.asarray(labels), grad))
        assert np.isfinite(loss)
        assert loss == pytest.approx(2 * big, rel=1e-6)
        g = gn.to_numpy(grad).astype(np.float64)
        want = np.zeros_like(g)
        want[:, 0] = 1.0 / n
        want[np.arange(n), labels] -= 1.0 / n
        np.testing.assert_allclose(g, want, atol=1e-6)


@pytest.mark.parametrize("dtype, big", HUGE_CASES)
def test_softmax_xent_onehot_at_huge_logits(dtype, big, backend):
    z = extreme_logits(big, dtype)
    with strict_floats():
        grad = backend.empty(z.shape, dtype)
        right = np.eye(4, dtype=dtype)[[0, 0, 0]]
        loss = float(backend.softmax_xent_onehot(backend.asarray(z.copy()), backend.asarray(right), grad))
        assert np.isfinite(loss) and 0.0 <= loss < 1e-6
        assert backend.all_finite(grad)
        wrong = np.eye(4, dtype=dtype)[[1, 1, 2]]
        loss = float(backend.softmax_xent_onehot(backend.asarray(z.copy()), backend.asarray(wrong), grad))
        assert loss == pytest.approx(2 * big, rel=1e-6)
        assert backend.all_finite(grad)
        # soft targets that put weight on the -big column are still finite
        soft = np.array([[0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0, 0.5, 0.5]], dtype=dtype)
        loss = float(backend.softmax_xent_onehot(backend.asarray(z.copy()), backend.asarray(soft), grad))
        assert np.isfinite(loss) and backend.all_finite(grad)


@pytest.mark.parametrize("dtype, big", HUGE_CASES + [("float32", 3e38), ("float64", 1e308)])
def test_softmax_never_overflows(dtype, big, backend):
    # one sign per row: z - max cannot overflow, so this must hold up to the dtype's limit
    z = np.array([[big, 0.5 * big, 0.0], [-big, -0.5 * big, -1.0], [big, big, big]], dtype=dtype)
    with strict_floats():
        p = gn.to_numpy(backend.softmax(backend.asarray(z)))
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(p[1], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(p[2], [1 / 3] * 3, rtol=1e-6)


@pytest.mark.parametrize("dtype, big", [("float32", 3e38), ("float64", 1e308)])
def test_rows_spanning_more_than_the_dtype_range_neither_warn_nor_fail(dtype, big, backend):
    # z - max runs past the range to -inf for the low entries: exp gives the 0 it should
    z = np.array([[big, -big, 0.0], [-big, big, -big]], dtype=dtype)
    labels = np.array([0, 0])
    with strict_floats():
        p = gn.to_numpy(backend.softmax(backend.asarray(z)))
        grad = backend.empty(z.shape, z.dtype)
        loss = float(backend.softmax_xent(backend.asarray(z), backend.asarray(labels), grad))
        grad_onehot = backend.empty(z.shape, z.dtype)
        loss_onehot = float(backend.softmax_xent_onehot(backend.asarray(z), backend.asarray(np.eye(3, dtype=dtype)[labels]),
                                                        grad_onehot))
    np.testing.assert_array_equal(p, [[1, 0, 0], [0, 1, 0]])
    # row 0 is right (loss 0), row 1 puts all mass on column 1 while the label is 0: loss inf
    assert loss == np.inf and loss_onehot == np.inf
    np.testing.assert_array_equal(gn.to_numpy(grad), np.array([[0, 0, 0], [-1, 1, 0]], dtype=dtype) / 2)
    np.testing.assert_array_equal(gn.to_numpy(grad_onehot), np.array([[0, 0, 0], [-1, 1, 0]], dtype=dtype) / 2)


SIGMOIDS = {"sigmoid": gn.Sigmoid(), "scaled": gn.Sigmoid(c=2.5, beta=0.75)}


@pytest.mark.parametrize("dtype, big", HUGE_CASES + [("float32", 3e38), ("float64", 1e308)])
@pytest.mark.parametrize("sig_name", list(SIGMOIDS))
def test_sigmoid_never_overflows(sig_name, dtype, big, backend):
    act = SIGMOIDS[sig_name]
    z = np.array([[big, -big, 0.0, 30.0, -30.0, 800.0, -800.0]], dtype=dtype)
    b = np.zeros(z.shape[1], dtype=dtype)
    with strict_floats():
        a = backend.bias_act(backend.asarray(z.copy()), backend.asarray(b), act)
        grad = backend.act_backward(backend.asarray(np.ones_like(z)), a, act)
    a, grad = gn.to_numpy(a), gn.to_numpy(grad)
    assert np.isfinite(a).all() and (a >= 0).all() and (a <= act.c).all()
    # far below zero the logistic is below every float32 normal scale: the NumPy reference
    # clips beta*z at -80 (float32) / -700 (float64) and returns ~1e-35 / ~1e-304 there,
    # the kernels underflow to 0; both are zero to any tolerance a user can see
    assert a[0, 0] == pytest.approx(act.c) and 0.0 <= a[0, 1] <= 1e-34 * act.c
    assert a[0, 2] == pytest.approx(act.c / 2)
    assert np.isfinite(grad).all() and (grad >= 0).all()
    assert grad[0, 0] == pytest.approx(0.0, abs=1e-6) and grad[0, 1] <= 1e-34


@pytest.mark.parametrize("dtype, big", HUGE_CASES)
def test_tanh_and_relus_at_huge_inputs(dtype, big, backend):
    z = np.array([[big, -big, 1.0]], dtype=dtype)
    b = np.zeros(3, dtype=dtype)
    for act in (gn.Tanh(), gn.ReLU(), gn.LeakyReLU(0.1), gn.Identity()):
        with strict_floats():
            a = backend.bias_act(backend.asarray(z.copy()), backend.asarray(b), act)
            grad = backend.act_backward(backend.asarray(np.ones_like(z)), a, act)
        assert backend.all_finite(a) and backend.all_finite(grad)


@pytest.mark.parametrize("dtype, big", HUGE_CASES)
@pytest.mark.parametrize("out_act", [gn.Sigmoid(), gn.Tanh(), gn.Softmax()], ids=["sigmoid", "tanh", "softmax"])
def test_mse_grad_with_saturated_outputs(out_act, dtype, big, backend):
    z = extreme_logits(big, dtype)
    targets = np.full(z.shape, 0.5, dtype=dtype)
    with strict_floats():
        a = backend.bias_act(backend.asarray(z.copy()), backend.asarray(np.zeros(4, dtype=dtype)), out_act)
        grad = backend.empty(z.shape, dtype)
        loss = float(backend.mse_grad(a, backend.asarray(targets), out_act, grad))
    assert np.isfinite(loss) and loss >= 0
    assert backend.all_finite(grad)


NET_CASES = {
    "relu_xent": dict(activation="relu", output="softmax", loss="cross_entropy"),
    "tanh_xent": dict(activation="tanh", output="softmax", loss="cross_entropy"),
    "sigmoid_sigmoid_mse": dict(activation="sigmoid", output="sigmoid", loss="mse"),
    "leaky_tanh_mse": dict(activation="leaky_relu", output="tanh", loss="mse"),
}


@pytest.mark.parametrize("dtype, scale", [("float32", 1e4), ("float32", 1e30), ("float64", 1e4), ("float64", 1e30)])
@pytest.mark.parametrize("case", list(NET_CASES))
def test_net_with_huge_inputs_has_finite_loss_and_gradient(case, dtype, scale, backend, rng):
    cfg = NET_CASES[case]
    net = gn.MLP([6, 8, 3], weight_decay=1e-3, dtype=dtype, seed=1, **cfg)
    X = rng.normal(size=(10, 6)) * scale
    if cfg["loss"] == "cross_entropy":
        y = rng.integers(0, 3, size=10)
    else:
        y = rng.uniform(-0.5, 0.5, size=(10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grads = net.loss_and_grad(X, y)
        out = gn.to_numpy(net.forward(X))
    assert np.isfinite(loss) and loss >= 0
    for g in grads:
        assert np.isfinite(gn.to_numpy(g)).all()
    assert np.isfinite(out).all()
    if cfg["loss"] == "cross_entropy":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        assert ((out >= 0) & (out <= 1)).all()
        assert float(net.loss(X, y)) == pytest.approx(loss, rel=1e-5)


def test_confident_classifier_loss_is_near_zero_or_the_margin(backend):
    """A single-layer softmax net whose logits are x itself: the loss equals the margin."""
    net = gn.MLP([3, 3], output="softmax", loss="cross_entropy", dtype="float64", seed=0)
    net.set_flat_params(np.concatenate([np.eye(3).ravel(), np.zeros(3)]))
    X = np.array([[1e4, -1e4, 0.0], [0.0, 5e3, -1e4]])
    assert net.loss(X, [0, 1]) == pytest.approx(0.0, abs=1e-12)
    # wrong labels: per row max - z_y = 2e4 and 1.5e4, mean 1.75e4
    assert net.loss(X, [1, 2]) == pytest.approx(1.75e4, rel=1e-12)
    loss, grads = net.loss_and_grad(X, [1, 2])
    assert np.isfinite(loss) and all(np.isfinite(gn.to_numpy(g)).all() for g in grads)
