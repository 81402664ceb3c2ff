"""Each fusable op of the backend ("fused": the NumPy reference, or the CUDA kernel on CuPy)
against the unfused composition a user would write in plain ``xp`` ("unfused"), per backend
and size. All of them are memory-bound: the report compares them with the copy bandwidth.

Inputs are random (never zeros) and built outside the timed part; each result is checked
against a float64 reference before anything is timed. Ops that overwrite their input get a
``setup`` that restores it before every round, untimed. The fused op's rounds alternate with
the unfused composition's, so its speedup comes from the same moments of the machine.
"""
from __future__ import annotations

import numpy as np
import pytest

from benchsupport import MLP_SIZES, Size, assert_close, describe, device_sync, host_float, params_of
from gpunet.activations import get_activation
from gpunet.cuda import layout
from gpunet.optim import SGDHyper

DTYPE = "float32"
ITEMSIZE = np.dtype(DTYPE).itemsize
VARIANTS = ["fused", "unfused"]


def _check_and_time(benchmark, measure, backend, variant, *, case, size, nbytes, fused, unfused, check,
                    setup=None):
    """Check both compositions against the reference, then time ``variant``; a fused one
    ("fused", or a kernel variant such as "fused-shared") runs with the unfused one as
    its alternating partner."""
    sync = device_sync(backend.name)
    is_fused = variant != "unfused"
    ops = {variant if is_fused else "fused": fused, "unfused": unfused}
    for name in ops if is_fused else [variant]:
        if setup is not None:
            setup()
        check(ops[name](), f"{case} {name}")
    describe(benchmark, case=case, impl=variant, backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=size, dtype=DTYPE,
             bytes=nbytes, bound="memory", work=int(np.prod(size.shape)))
    partners = [("unfused", unfused, sync)] if is_fused else []
    measure(ops[variant], sync=sync, setup=setup, partners=partners)


# ---- softmax + cross-entropy + gradient ------------------------------------------------
SOFTMAX_SIZES = [
    Size("small", (128, 10)),
    Size("medium", (1024, 1000)),
    Size("large", (4096, 4096)),
    Size("large", (8192, 32768), gpu_only=True),
]


def _softmax_xent_unfused(xp, logits, labels):
    """The textbook chain: probabilities, one-hot, loss, gradient; five passes and temporaries."""
    n = logits.shape[0]
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    onehot = xp.zeros_like(probs)
    onehot[xp.arange(n), labels] = 1.0
    loss = -(onehot * xp.log(probs)).sum() / n
    return loss, (probs - onehot) / n


@pytest.mark.parametrize("variant", VARIANTS + ["fused-shared"])
@pytest.mark.parametrize("size", params_of(SOFTMAX_SIZES))
def test_softmax_xent(benchmark, measure, backend, size, variant, monkeypatch):
    n, c = size.shape
    if variant == "fused-shared":
        # the long-row kernels side by side: rows kept in shared memory instead of registers
        if backend.name != "cupy" or c <= layout.WARP_ROW_MAX_COLS:
            pytest.skip("the long-row variants are CUDA kernels for rows over 1024 columns")
        monkeypatch.setenv("GPUNET_LONG_ROWS", "shared")
    rng = np.random.default_rng(1)
    logits_host = 3 * rng.standard_normal((n, c), dtype=DTYPE)
    labels_host = rng.integers(0, c, n).astype(np.int64)
    logits, labels = backend.asarray(logits_host), backend.asarray(labels_host)
    grad = backend.empty((n, c), DTYPE)

    l64 = logits_host.astype(np.float64)
    shifted = l64 - l64.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ref_loss = -logp[np.arange(n), labels_host].mean()
    ref_grad = np.exp(logp)
    ref_grad[np.arange(n), labels_host] -= 1.0
    ref_grad /= n

    def check(result, what):
        loss, g = result
        assert abs(host_float(loss) - ref_loss) <= 1e-4 * max(1.0, ref_loss), (what, host_float(loss), ref_loss)
        assert_close(g, ref_grad, DTYPE, what)

    _check_and_time(benchmark, measure, backend, variant, case="softmax_xent", size=size,
                    nbytes=2 * n * c * ITEMSIZE + n * labels_host.itemsize,   # logits in, gradient out
                    fused=lambda: (backend.softmax_xent(logits, labels, grad), grad),
                    unfused=lambda: _softmax_xent_unfused(backend.xp, logits, labels), check=check)


# ---- bias + activation after a GEMM ------------------------------------------------------
ELEMENTWISE_SIZES = [
    Size("small", (128, 128)),
    Size("medium", (1024, 1024)),
    Size("large", (4096, 4096)),
    Size("large", (8192, 8192), gpu_only=True),
]

_BIAS_ACT_UNFUSED = {
    "relu": lambda xp, z, b: xp.maximum(z + b, 0),
    "sigmoid": lambda xp, z, b: 1 / (1 + xp.exp(-(z + b))),
}
_BIAS_ACT_REF = {
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.parametrize("size", params_of(ELEMENTWISE_SIZES))
def test_bias_act(benchmark, measure, backend, size, act, variant):
    n, m = size.shape
    rng = np.random.default_rng(2)
    z_host = rng.standard_normal((n, m), dtype=DTYPE)
    b_host = rng.standard_normal(m, dtype=DTYPE)
    z0, b = backend.asarray(z_host), backend.asarray(b_host)
    z = z0.copy()
    activation = get_activation(act)
    ref = _BIAS_ACT_REF[act](z_host.astype(np.float64) + b_host)

    def setup():
        z[...] = z0   # the fused op works in place: z <- f(z + b)

    _check_and_time(benchmark, measure, backend, variant, case=f"bias_act_{act}", size=size,
                    nbytes=(2 * n * m + m) * ITEMSIZE,
                    fused=lambda: backend.bias_act(z, b, activation),
                    unfused=lambda: _BIAS_ACT_UNFUSED[act](backend.xp, z, b),
                    check=lambda out, what: assert_close(out, ref, DTYPE, what), setup=setup)


# ---- activation derivative times the incoming gradient ---------------------------------
_ACT_BACKWARD_UNFUSED = {
    "relu": lambda xp, g, a: g * (a > 0),
    "tanh": lambda xp, g, a: g * (1 - a * a),
}
_ACT_FORWARD_REF = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}
_ACT_DERIV_REF = {"relu": lambda a: (a > 0).astype(np.float64), "tanh": lambda a: 1 - a * a}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("size", params_of(ELEMENTWISE_SIZES))
def test_act_backward(benchmark, measure, backend, size, act, variant):
    n, m = size.shape
    rng = np.random.default_rng(3)
    a_host = _ACT_FORWARD_REF[act](rng.standard_normal((n, m), dtype=DTYPE))
    g_host = rng.standard_normal((n, m), dtype=DTYPE)
    a, g0 = backend.asarray(a_host), backend.asarray(g_host)
    g = g0.copy()
    activation = get_activation(act)
    ref = g_host.astype(np.float64) * _ACT_DERIV_REF[act](a_host.astype(np.float64))

    def setup():
        g[...] = g0   # the fused op works in place: g <- g * f'(z)

    _check_and_time(benchmark, measure, backend, variant, case=f"act_backward_{act}", size=size,
                    nbytes=3 * n * m * ITEMSIZE,
                    fused=lambda: backend.act_backward(g, a, activation),
                    unfused=lambda: _ACT_BACKWARD_UNFUSED[act](backend.xp, g, a),
                    check=lambda out, what: assert_close(out, ref, DTYPE, what), setup=setup)


# ---- MSE loss and gradient through a sigmoid output ------------------------------------
MSE_SIZES = [
    Size("small", (128, 10)),
    Size("medium", (1024, 1024)),
    Size("large", (4096, 4096)),
    Size("large", (8192, 8192), gpu_only=True),
]


def _mse_grad_unfused(xp, a, t):
    n = a.shape[0]
    diff = a - t
    loss = (diff ** 2).sum() / (2 * n)
    return loss, diff / n * (a * (1 - a))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", params_of(MSE_SIZES))
def test_mse_grad(benchmark, measure, backend, size, variant):
    n, k = size.shape
    rng = np.random.default_rng(4)
    a_host = 1 / (1 + np.exp(-rng.standard_normal((n, k), dtype=DTYPE)))
    t_host = rng.random((n, k), dtype=DTYPE)
    a, t = backend.asarray(a_host), backend.asarray(t_host)
    grad = backend.empty((n, k), DTYPE)
    sigmoid = get_activation("sigmoid")
    a64, t64 = a_host.astype(np.float64), t_host.astype(np.float64)
    ref_loss = ((a64 - t64) ** 2).sum() / (2 * n)
    ref_grad = (a64 - t64) / n * a64 * (1 - a64)

    def check(result, what):
        loss, g = result
        assert abs(host_float(loss) - ref_loss) <= 1e-4 * ref_loss, (what, host_float(loss), ref_loss)
        assert_close(g, ref_grad, DTYPE, what)

    _check_and_time(benchmark, measure, backend, variant, case="mse_grad", size=size,
                    nbytes=3 * n * k * ITEMSIZE,
                    fused=lambda: (backend.mse_grad(a, t, sigmoid, grad), grad),
                    unfused=lambda: _mse_grad_unfused(backend.xp, a, t), check=check)


# ---- SGD with momentum and weight decay over the flat parameter buffer ----------------
# one buffer per MLP of the suite: its parameter count
SGD_SIZES = [Size(s.tier, (s.n_params,), s.gpu_only) for s in MLP_SIZES]
LR, MOMENTUM, DECAY = 0.01, 0.9, 1e-4


def _sgd_unfused(xp, params, grads, velocity, n_decay):
    g = grads.copy()
    g[:n_decay] += DECAY * params[:n_decay]
    velocity[...] = MOMENTUM * velocity + g
    params -= LR * velocity
    return params


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", params_of(SGD_SIZES))
def test_sgd_update(benchmark, measure, backend, size, variant):
    (p,) = size.shape
    n_decay = int(p * 0.99)   # weights first, biases last, as in MLP's flat buffer
    rng = np.random.default_rng(5)
    p_host, g_host, v_host = (rng.standard_normal(p, dtype=DTYPE) for _ in range(3))
    p0, grads, v0 = backend.asarray(p_host), backend.asarray(g_host), backend.asarray(v_host)
    params, velocity = p0.copy(), v0.copy()
    p64, g64, v64 = (h.astype(np.float64) for h in (p_host, g_host, v_host))
    g64[:n_decay] += DECAY * p64[:n_decay]
    v_ref = MOMENTUM * v64 + g64
    hyper = SGDHyper(lr=LR, momentum=MOMENTUM, weight_decay=DECAY)

    def setup():
        params[...] = p0   # both update params and velocity in place
        velocity[...] = v0

    def check(_, what):
        assert_close(velocity, v_ref, DTYPE, f"{what} velocity")
        assert_close(params, p64 - LR * v_ref, DTYPE, f"{what} params")

    _check_and_time(benchmark, measure, backend, variant, case="sgd_update", size=size,
                    nbytes=5 * p * ITEMSIZE,   # params, velocity, grads in; params, velocity out
                    fused=lambda: backend.sgd_update(params, grads, velocity, hyper, n_decay=n_decay,
                                                     scale=1.0, skip=False),
                    unfused=lambda: _sgd_unfused(backend.xp, params, grads, velocity, n_decay),
                    check=check, setup=setup)
