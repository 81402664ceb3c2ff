"""Every fusable op of the backend against the plain unfused chain, written here in float64
NumPy from the math (not from gpunet). The same tests run on every backend the machine has,
so a CuPy kernel is held to the NumPy reference's spec.

Inputs are fresh random draws (never zeros) at odd shapes, in both dtypes; the reference is
computed in float64 from the very values the op received (rounded to its dtype first).
"""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from gpunet.optim import SGDHyper
from conftest import ELEMENTWISE_ACTIVATIONS, tolerance

ROWS = [1, 7]
COLS = [1, 3, 1000]

ELEMENTWISE = ELEMENTWISE_ACTIVATIONS
WITH_SOFTMAX = {**ELEMENTWISE, "softmax": gn.Softmax()}


def draw(rng, shape, dtype, scale=2.0):
    """Random values of ``dtype`` (returned as a host array), bounded away from exact zeros."""
    x = rng.normal(scale=scale, size=shape)
    x[x == 0] = 0.5
    return x.astype(dtype)


def ref_forward(act, z):
    """f(z) in float64 from the textbook formulas."""
    if isinstance(act, gn.Sigmoid):
        return act.c / (1.0 + np.exp(-act.beta * z))
    if isinstance(act, gn.Tanh):
        return np.tanh(z)
    if isinstance(act, gn.ReLU):
        return np.maximum(z, 0.0)
    if isinstance(act, gn.LeakyReLU):
        return np.where(z >= 0, z, act.slope * z)
    if isinstance(act, gn.Identity):
        return z.copy()
    if isinstance(act, gn.Exp):
        return np.exp(z)
    if isinstance(act, gn.Softmax):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise AssertionError(act)


def ref_derivative_from_output(act, a):
    """f'(z) written through a = f(z): the quantity the backward ops multiply by."""
    if isinstance(act, gn.Sigmoid):
        return act.beta * a * (1.0 - a / act.c)
    if isinstance(act, gn.Tanh):
        return 1.0 - a ** 2
    if isinstance(act, gn.ReLU):
        return (a > 0).astype(np.float64)
    if isinstance(act, gn.LeakyReLU):
        return np.where(a > 0, 1.0, act.slope)
    if isinstance(act, gn.Identity):
        return np.ones_like(a)
    if isinstance(act, gn.Exp):
        return a.copy()
    raise AssertionError(act)


def ref_act_backward(act, grad, a):
    if isinstance(act, gn.Softmax):
        # the full Jacobian per row, diag(a) - a a^T, applied to grad
        jac = np.einsum("ni,ij->nij", a, np.eye(a.shape[1])) - np.einsum("ni,nj->nij", a, a)
        return np.einsum("nij,nj->ni", jac, grad)
    return grad * ref_derivative_from_output(act, a)


def on_device(backend, x):
    """A backend copy of a host array: on NumPy ``asarray`` would alias it, and the in-place
    ops would then overwrite the inputs the reference is computed from."""
    return backend.asarray(np.array(x, copy=True))


def host(x):
    return np.asarray(gn.to_numpy(x), dtype=np.float64)


def assert_close(got, want, dtype, scale=1.0):
    tol = tolerance(dtype)
    np.testing.assert_allclose(host(got), want, rtol=tol["rtol"], atol=tol["atol"] * scale)


# ---- bias + activation ---------------------------------------------------------------
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("act_name", list(WITH_SOFTMAX))
def test_bias_act_matches_unfused(act_name, rows, cols, backend, dtype, rng):
    act = WITH_SOFTMAX[act_name]
    z_host, b_host = draw(rng, (rows, cols), dtype), draw(rng, (cols,), dtype)
    z, b = on_device(backend, z_host), on_device(backend, b_host)
    result = backend.bias_act(z, b, act)
    # the sum is rounded to the dtype first, as the op adds before it activates
    want = ref_forward(act, (z_host + b_host).astype(np.float64))
    assert_close(result, want, dtype)
    assert_close(z, want, dtype)          # in place: z holds f(z + b)
    assert result.dtype == np.dtype(dtype) and result.shape == (rows, cols)
    np.testing.assert_array_equal(gn.to_numpy(b), b_host)   # the bias is not touched


# ---- activation derivative times the incoming gradient ----------------------------------
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("act_name", list(ELEMENTWISE))
def test_act_backward_matches_unfused(act_name, rows, cols, backend, dtype, rng):
    act = ELEMENTWISE[act_name]
    a_host = ref_forward(act, draw(rng, (rows, cols), np.float64)).astype(dtype)
    g_host = draw(rng, (rows, cols), dtype, scale=1.0)
    a, grad = on_device(backend, a_host), on_device(backend, g_host)
    result = backend.act_backward(grad, a, act)
    want = ref_act_backward(act, g_host.astype(np.float64), a_host.astype(np.float64))
    assert_close(result, want, dtype)
    assert_close(grad, want, dtype)       # in place into grad
    np.testing.assert_array_equal(gn.to_numpy(a), a_host)


# ---- bias gradient ---------------------------------------------------------------------
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS + [1025])
def test_bias_grad_matches_column_sums(rows, cols, backend, dtype, rng):
    d_host = draw(rng, (rows, cols), dtype)
    delta = on_device(backend, d_host)
    want = d_host.astype(np.float64).sum(axis=0)
    # summing many rows in float32 accumulates rounding: scale atol with the row count
    assert_close(backend.bias_grad(delta), want, dtype, scale=rows)
    out = backend.empty((cols,), dtype)
    result = backend.bias_grad(delta, out=out)
    assert_close(out, want, dtype, scale=rows)
    assert_close(result, want, dtype, scale=rows)


# ---- softmax + cross-entropy ------------------------------------------------------------
def ref_softmax_xent(z, targets):
    """(mean loss, gradient at the logits) for labels (N,) or target rows (N, C), float64."""
    n, c = z.shape
    t = np.eye(c)[targets] if targets.ndim == 1 else targets
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(t * logp).sum() / n
    return loss, (np.exp(logp) - t) / n


@pytest.mark.parametrize("alias", [False, True], ids=["separate", "grad_out_is_logits"])
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
def test_softmax_xent_matches_unfused(rows, cols, alias, backend, dtype, rng):
    z_host = draw(rng, (rows, cols), dtype, scale=3.0)
    labels_host = rng.integers(0, cols, size=rows)
    logits, labels = on_device(backend, z_host), on_device(backend, labels_host)
    grad_out = logits if alias else backend.empty((rows, cols), dtype)
    loss = backend.softmax_xent(logits, labels, grad_out)
    want_loss, want_grad = ref_softmax_xent(z_host.astype(np.float64), labels_host)
    assert np.ndim(loss) == 0
    tol = tolerance(dtype)
    assert float(loss) == pytest.approx(want_loss, rel=tol["rtol"], abs=tol["atol"])
    assert_close(grad_out, want_grad, dtype)
    if not alias:
        np.testing.assert_array_equal(gn.to_numpy(logits), z_host)


@pytest.mark.parametrize("targets_kind", ["onehot", "soft"])
@pytest.mark.parametrize("alias", [False, True], ids=["separate", "grad_out_is_logits"])
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
def test_softmax_xent_onehot_matches_unfused(rows, cols, alias, targets_kind, backend, dtype, rng):
    z_host = draw(rng, (rows, cols), dtype, scale=3.0)
    if targets_kind == "onehot":
        t_host = np.eye(cols)[rng.integers(0, cols, size=rows)].astype(dtype)
    else:
        t_host = rng.dirichlet(np.ones(cols), size=rows).astype(dtype)
    logits, targets = on_device(backend, z_host), on_device(backend, t_host)
    grad_out = logits if alias else backend.empty((rows, cols), dtype)
    loss = backend.softmax_xent_onehot(logits, targets, grad_out)
    want_loss, want_grad = ref_softmax_xent(z_host.astype(np.float64), t_host.astype(np.float64))
    assert np.ndim(loss) == 0
    tol = tolerance(dtype)
    assert float(loss) == pytest.approx(want_loss, rel=tol["rtol"], abs=tol["atol"])
    assert_close(grad_out, want_grad, dtype)
    np.testing.assert_array_equal(gn.to_numpy(targets), t_host)


def test_softmax_xent_labels_and_onehot_agree(backend, dtype, rng):
    z_host = draw(rng, (7, 5), dtype)
    labels_host = rng.integers(0, 5, size=7)
    g1, g2 = backend.empty((7, 5), dtype), backend.empty((7, 5), dtype)
    l1 = backend.softmax_xent(on_device(backend, z_host), on_device(backend, labels_host), g1)
    l2 = backend.softmax_xent_onehot(on_device(backend, z_host), backend.asarray(np.eye(5, dtype=dtype)[labels_host]), g2)
    tol = tolerance(dtype)
    assert float(l1) == pytest.approx(float(l2), rel=tol["rtol"], abs=tol["atol"])
    assert_close(g1, host(g2), dtype)


def test_softmax_op_matches_unfused(backend, dtype, rng):
    z_host = draw(rng, (7, 1000), dtype, scale=5.0)
    want = ref_forward(gn.Softmax(), z_host.astype(np.float64))
    assert_close(backend.softmax(on_device(backend, z_host)), want, dtype)
    out = backend.empty((7, 1000), dtype)
    backend.softmax(on_device(backend, z_host), out=out)
    assert_close(out, want, dtype)


# ---- MSE at the output ---------------------------------------------------------------------
OUTPUTS = {"sigmoid": gn.Sigmoid(), "tanh": gn.Tanh(), "identity": gn.Identity(),
           "softmax": gn.Softmax(), "scaled_sigmoid": gn.Sigmoid(c=2.0, beta=0.5)}


@pytest.mark.parametrize("alias", [False, True], ids=["separate", "grad_out_is_a"])
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("out_name", list(OUTPUTS))
def test_mse_grad_matches_unfused(out_name, rows, cols, alias, backend, dtype, rng):
    act = OUTPUTS[out_name]
    a_host = ref_forward(act, draw(rng, (rows, cols), np.float64)).astype(dtype)
    y_host = draw(rng, (rows, cols), dtype, scale=1.0)
    a, targets = on_device(backend, a_host), on_device(backend, y_host)
    grad_out = a if alias else backend.empty((rows, cols), dtype)
    loss = backend.mse_grad(a, targets, act, grad_out)

    a64, y64 = a_host.astype(np.float64), y_host.astype(np.float64)
    want_loss = ((a64 - y64) ** 2).sum() / (2 * rows)
    want_grad = ref_act_backward(act, (a64 - y64) / rows, a64)
    assert np.ndim(loss) == 0
    tol = tolerance(dtype)
    assert float(loss) == pytest.approx(want_loss, rel=tol["rtol"], abs=tol["atol"])
    assert_close(grad_out, want_grad, dtype)
    np.testing.assert_array_equal(gn.to_numpy(targets), y_host)
    if not alias:
        np.testing.assert_array_equal(gn.to_numpy(a), a_host)


# ---- the optimizer update ----------------------------------------------------------------
def ref_sgd_steps(params, grads_seq, *, lr, momentum, nesterov, weight_decay, n_decay, scale, skips):
    """Unfused SGD in float64 over several steps; returns (params, velocity)."""
    p = params.astype(np.float64).copy()
    v = np.zeros_like(p)
    for grads, skip in zip(grads_seq, skips):
        if skip:
            continue
        g = scale * grads.astype(np.float64)
        decay = np.zeros_like(p)
        decay[:n_decay] = weight_decay * p[:n_decay]
        g = g + decay
        v = momentum * v + g
        p = p - lr * ((g + momentum * v) if nesterov else v)
    return p, v


SGD_CASES = {
    "plain": dict(momentum=0.0, nesterov=False, weight_decay=0.0, scale=1.0),
    "momentum": dict(momentum=0.9, nesterov=False, weight_decay=0.0, scale=1.0),
    "nesterov": dict(momentum=0.8, nesterov=True, weight_decay=0.0, scale=1.0),
    "decay": dict(momentum=0.0, nesterov=False, weight_decay=0.05, scale=1.0),
    "momentum_decay_clip": dict(momentum=0.9, nesterov=False, weight_decay=0.01, scale=0.37),
    "nesterov_decay_clip": dict(momentum=0.5, nesterov=True, weight_decay=0.02, scale=0.61),
}


@pytest.mark.parametrize("scale_as_array", [False, True], ids=["scale_float", "scale_0d"])
@pytest.mark.parametrize("size", [1, 7, 1003])
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_update_matches_unfused(case, size, scale_as_array, backend, dtype, rng):
    cfg = SGD_CASES[case]
    lr = 0.07
    n_decay = max(size - 3, 0) if size > 1 else 1
    p_host = draw(rng, (size,), dtype)
    grads_seq = [draw(rng, (size,), dtype) for _ in range(3)]
    skips = [False, True, False]
    params = on_device(backend, p_host)
    velocity = backend.zeros((size,), dtype) if cfg["momentum"] else None
    scale = backend.xp.asarray(cfg["scale"], dtype=dtype) if scale_as_array else cfg["scale"]
    for g_host, skip in zip(grads_seq, skips):
        skip_flag = backend.xp.asarray(skip) if scale_as_array else skip
        hyper = SGDHyper(lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
        backend.sgd_update(params, on_device(backend, g_host), velocity, hyper, n_decay=n_decay, scale=scale,
                           skip=skip_flag)
    want_p, want_v = ref_sgd_steps(p_host, grads_seq, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                                   weight_decay=cfg["weight_decay"], n_decay=n_decay,
                                   scale=float(np.float32(cfg["scale"]) if dtype == "float32" and scale_as_array
                                               else cfg["scale"]),
                                   skips=skips)
    assert_close(params, want_p, dtype, scale=10)
    if velocity is not None:
        assert_close(velocity, want_v, dtype, scale=10)


def test_sgd_update_decays_weights_prefix_only(backend, rng):
    size, n_decay = 11, 6
    p_host, g_host = draw(rng, (size,), np.float64), draw(rng, (size,), np.float64)
    decayed, plain = on_device(backend, p_host), on_device(backend, p_host)
    common = dict(n_decay=n_decay, scale=1.0, skip=False)
    backend.sgd_update(decayed, on_device(backend, g_host), None, SGDHyper(lr=0.1, weight_decay=0.5), **common)
    backend.sgd_update(plain, on_device(backend, g_host), None, SGDHyper(lr=0.1, weight_decay=0.0), **common)
    decayed, plain = host(decayed), host(plain)
    np.testing.assert_array_equal(decayed[n_decay:], plain[n_decay:])   # biases: no decay at all
    np.testing.assert_allclose(decayed[:n_decay] - plain[:n_decay], -0.1 * 0.5 * p_host[:n_decay], rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_skip_changes_nothing(momentum, backend, dtype, rng):
    p_host, g_host = draw(rng, (9,), dtype), draw(rng, (9,), dtype)
    v_host = draw(rng, (9,), dtype)
    params, velocity = on_device(backend, p_host), on_device(backend, v_host) if momentum else None
    for skip in (True, backend.xp.asarray(True)):
        backend.sgd_update(params, on_device(backend, g_host), velocity,
                           SGDHyper(lr=0.1, momentum=momentum, weight_decay=0.1), n_decay=5, scale=1.0, skip=skip)
    np.testing.assert_array_equal(gn.to_numpy(params), p_host)
    if momentum:
        np.testing.assert_array_equal(gn.to_numpy(velocity), v_host)


def test_sgd_update_leaves_gradients_untouched(backend, dtype, rng):
    p_host, g_host = draw(rng, (20,), dtype), draw(rng, (20,), dtype)
    grads = on_device(backend, g_host)
    backend.sgd_update(on_device(backend, p_host), grads, backend.zeros((20,), dtype),
                       SGDHyper(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1), n_decay=12, scale=0.5,
                       skip=False)
    np.testing.assert_array_equal(gn.to_numpy(grads), g_host)


# ---- small helpers the model relies on -----------------------------------------------------
def test_sumsq_and_all_finite(backend, dtype, rng):
    x_host = draw(rng, (1003,), dtype)
    x = on_device(backend, x_host)
    tol = tolerance(dtype)
    assert float(backend.sumsq(x)) == pytest.approx((x_host.astype(np.float64) ** 2).sum(), rel=10 * tol["rtol"])
    m_host = draw(rng, (7, 3), dtype)
    assert float(backend.sumsq(on_device(backend, m_host))) == pytest.approx((m_host.astype(np.float64) ** 2).sum(),
                                                                          rel=10 * tol["rtol"])
    assert backend.all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y_host = x_host.copy()
        y_host[500] = bad
        assert not backend.all_finite(on_device(backend, y_host))


def test_gather_rows_and_matmul(backend, dtype, rng):
    x_host = draw(rng, (9, 4), dtype)
    labels_host = np.arange(9) * 3
    idx_host = np.array([8, 0, 3, 3])
    got = backend.gather_rows(on_device(backend, idx_host), [on_device(backend, x_host), on_device(backend, labels_host)],
                              [backend.empty((4, 4), dtype), backend.empty(4, np.int64)])
    np.testing.assert_array_equal(gn.to_numpy(got[0]), x_host[idx_host])
    np.testing.assert_array_equal(gn.to_numpy(got[1]), labels_host[idx_host])
    w_host = draw(rng, (4, 5), dtype)
    assert_close(backend.matmul(on_device(backend, x_host), on_device(backend, w_host)),
                 x_host.astype(np.float64) @ w_host.astype(np.float64), dtype, scale=10)
