"""The Adam/AdamW and RMSprop kernels (through ``CupyBackend``) against their NumPy reference.

The kernels use explicitly rounded operations in the reference's order and take the host
scalars rounded the way the reference rounds its Python floats, so on finite data they
must agree bit for bit. Fresh random inputs (never zeros), sizes that wrap the capped 1-D
grid, both dtypes, magnitudes from tiny to near overflow, host and device scale/skip, and
the fallbacks. Needs a GPU (marked ``gpu``; skipped cleanly without one).
"""
from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from gpunet.cuda import layout  # noqa: E402
from gpunet.optim import SGD, Adam, AdamHyper, AdamW, RMSprop, RMSpropHyper  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
WRAP_1D = layout.MAX_GRID_1D * layout.BLOCK * 3 + 4099    # every thread of the capped grid loops
SIZES = [1, 3, 1000, 32768, WRAP_1D]


@pytest.fixture
def rng():
    return np.random.default_rng(97)


def draw(rng, size, dtype, scale=2.0, positive=False):
    x = rng.normal(scale=scale, size=size)
    x[x == 0] = 0.25
    return (np.abs(x) if positive else x).astype(dtype)


def host(x):
    return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else np.asarray(x)


def assert_bitwise(got, want):
    got, want = host(got), host(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.tobytes() != want.tobytes():
        bits = f"u{got.itemsize}"
        diff = np.flatnonzero(got.view(bits) != want.view(bits))
        i = diff[0]
        raise AssertionError(f"{diff.size} of {got.size} differ; first at {i}: got {got[i]!r}, want {want[i]!r}")


ADAM_CASES = [
    dict(weight_decay=0.0, decoupled_weight_decay=0.0),
    dict(weight_decay=1e-2, decoupled_weight_decay=0.0),
    dict(weight_decay=0.0, decoupled_weight_decay=0.1),
    dict(weight_decay=3e-3, decoupled_weight_decay=0.05),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_matches_reference_bitwise(gpu, ref, case, size, dtype, rng):
    if size == WRAP_1D and case not in (0, 3):
        pytest.skip("the grid-wrapping size is run for two cases")
    cfg = ADAM_CASES[case]
    n_decay = max(size * 2 // 3, 1)
    p_host = draw(rng, size, dtype)
    state = [np.zeros(size, dtype), np.zeros(size, dtype)]
    p_ref, m_ref, v_ref = p_host.copy(), *[s.copy() for s in state]
    p_gpu, m_gpu, v_gpu = cupy.asarray(p_host), *[cupy.asarray(s) for s in state]
    for step in range(1, 4):
        g_host = draw(rng, size, dtype)
        scale = dtype(0.25 + 0.5 * step)
        hyper = AdamHyper(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, **cfg)
        kwargs = dict(step=step, n_decay=n_decay)
        ref.adam_update(p_ref, g_host, m_ref, v_ref, hyper, scale=scale, skip=False, **kwargs)
        gpu.adam_update(p_gpu, cupy.asarray(g_host), m_gpu, v_gpu, hyper, scale=cupy.asarray(scale),
                        skip=cupy.zeros((), dtype=bool), **kwargs)
    assert_bitwise(p_gpu, p_ref)
    assert_bitwise(m_gpu, m_ref)
    assert_bitwise(v_gpu, v_ref)


RMSPROP_CASES = [
    dict(momentum=0.0, centered=False, weight_decay=0.0),
    dict(momentum=0.9, centered=False, weight_decay=1e-2),
    dict(momentum=0.0, centered=True, weight_decay=0.0),
    dict(momentum=0.5, centered=True, weight_decay=1e-3),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", range(len(RMSPROP_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_update_matches_reference_bitwise(gpu, ref, case, size, dtype, rng):
    if size == WRAP_1D and case not in (0, 3):
        pytest.skip("the grid-wrapping size is run for two cases")
    cfg = RMSPROP_CASES[case]
    n_decay = max(size // 2, 1)
    p_host = draw(rng, size, dtype)
    # non-zero starting state, so the centred variance can also come out negative and clamp
    s_host, a_host, b_host = draw(rng, size, dtype, positive=True), draw(rng, size, dtype), draw(rng, size, dtype)
    p_ref, s_ref = p_host.copy(), s_host.copy()
    a_ref = a_host.copy() if cfg["centered"] else None
    b_ref = b_host.copy() if cfg["momentum"] else None
    p_gpu, s_gpu = cupy.asarray(p_host), cupy.asarray(s_host)
    a_gpu = cupy.asarray(a_host) if cfg["centered"] else None
    b_gpu = cupy.asarray(b_host) if cfg["momentum"] else None
    for step in range(3):
        g_host = draw(rng, size, dtype)
        scale = dtype(1.5 - 0.5 * step)
        hyper = RMSpropHyper(lr=1e-3, alpha=0.9, eps=1e-8, **cfg)
        ref.rmsprop_update(p_ref, g_host, s_ref, a_ref, b_ref, hyper, scale=scale, skip=False, n_decay=n_decay)
        gpu.rmsprop_update(p_gpu, cupy.asarray(g_host), s_gpu, a_gpu, b_gpu, hyper, scale=cupy.asarray(scale),
                           skip=cupy.zeros((), dtype=bool), n_decay=n_decay)
    assert_bitwise(p_gpu, p_ref)
    assert_bitwise(s_gpu, s_ref)
    if cfg["centered"]:
        assert_bitwise(a_gpu, a_ref)
    if cfg["momentum"]:
        assert_bitwise(b_gpu, b_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_magnitudes_agree(gpu, ref, dtype, rng):
    """Gradients from 1e-30 to near the square-root of the dtype's largest value (so g*g and the
    second moments stay finite), and one past it (inf moments, zero step): both sides alike."""
    size = 4099
    big = float(np.sqrt(np.finfo(dtype).max)) / 4
    mags = np.array([1e-30, 1e-8, 1.0, 1e8, big, big * 8], dtype=np.float64)
    g_host = (draw(rng, size, np.float64) * mags[rng.integers(len(mags), size=size)]).astype(dtype)
    p_host = draw(rng, size, dtype)
    for op in ("adam", "rmsprop"):
        p_ref, p_gpu = p_host.copy(), cupy.asarray(p_host)
        state_ref = [np.zeros(size, dtype) for _ in range(3)]
        state_gpu = [cupy.zeros(size, dtype) for _ in range(3)]
        with np.errstate(over="ignore", invalid="ignore"):
            if op == "adam":
                hyper = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                                  decoupled_weight_decay=0.0)
                kwargs = dict(step=1, n_decay=size)
                ref.adam_update(p_ref, g_host, *state_ref[:2], hyper, scale=dtype(1), skip=False, **kwargs)
                gpu.adam_update(p_gpu, cupy.asarray(g_host), *state_gpu[:2], hyper, scale=1.0, skip=False,
                                **kwargs)
            else:
                hyper = RMSpropHyper(lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.9, centered=True, weight_decay=0.0)
                ref.rmsprop_update(p_ref, g_host, *state_ref, hyper, scale=dtype(1), skip=False, n_decay=size)
                gpu.rmsprop_update(p_gpu, cupy.asarray(g_host), *state_gpu, hyper, scale=1.0, skip=False,
                                   n_decay=size)
        np.testing.assert_array_equal(host(p_gpu), p_ref, err_msg=op)   # NaN equals NaN here
        for got, want in zip(state_gpu, state_ref):
            np.testing.assert_array_equal(host(got), want, err_msg=op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_scale_and_skip_flags(gpu, ref, dtype, rng):
    size = 777
    p_host, g_host = draw(rng, size, dtype), draw(rng, size, dtype)
    hyper = AdamHyper(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=1e-2, decoupled_weight_decay=0.0)
    kwargs = dict(n_decay=500)
    p_ref, m_ref, v_ref = p_host.copy(), np.zeros(size, dtype), np.zeros(size, dtype)
    ref.adam_update(p_ref, g_host, m_ref, v_ref, hyper, step=1, scale=1.0, skip=False, **kwargs)
    ref.adam_update(p_ref, g_host, m_ref, v_ref, hyper, step=2, scale=0.3, skip=False, **kwargs)
    p, m, v, g = cupy.asarray(p_host), cupy.zeros(size, dtype), cupy.zeros(size, dtype), cupy.asarray(g_host)
    gpu.adam_update(p, g, m, v, hyper, step=1, scale=1.0, skip=False, **kwargs)
    gpu.adam_update(p, g, m, v, hyper, step=2, scale=0.3, skip=False, **kwargs)
    assert_bitwise(p, p_ref)
    before = [host(a).copy() for a in (p, m, v)]
    gpu.adam_update(p, g, m, v, hyper, step=3, scale=1.0, skip=True, **kwargs)
    gpu.adam_update(p, g, m, v, hyper, step=3, scale=cupy.asarray(dtype(0.5)), skip=cupy.ones((), dtype=bool),
                    **kwargs)
    s, b = cupy.ones(size, dtype), cupy.zeros(size, dtype)
    gpu.rmsprop_update(p, g, s, None, b, RMSpropHyper(lr=0.1, alpha=0.9, eps=1e-8, momentum=0.9, centered=False),
                       n_decay=500, scale=1.0, skip=cupy.ones((), dtype=bool))
    for got, old in zip((p, m, v), before):
        np.testing.assert_array_equal(host(got), old)
    np.testing.assert_array_equal(host(s), 1.0)
    np.testing.assert_array_equal(host(g), g_host)


def test_skip_flag_is_read_on_the_device(gpu, rng):
    """A NaN loss turned into a device flag by a kernel skips the update without a host read."""
    p_host = draw(rng, 100, np.float32)
    p = cupy.asarray(p_host)
    skip = ~cupy.isfinite(cupy.asarray(np.float32(np.nan)))
    gpu.adam_update(p, cupy.asarray(draw(rng, 100, np.float32)), cupy.zeros(100, np.float32),
                    cupy.zeros(100, np.float32), AdamHyper(lr=0.1), step=1, n_decay=50, scale=1.0, skip=skip)
    np.testing.assert_array_equal(host(p), p_host)


def test_non_contiguous_buffers_fall_back_to_the_reference(gpu, ref, rng):
    p_host, g_host = draw(rng, 200, np.float64), draw(rng, 200, np.float64)
    p_ref, m_ref, v_ref = p_host[::2].copy(), np.zeros(100), np.zeros(100)
    hyper = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    ref.adam_update(p_ref, g_host[::2], m_ref, v_ref, hyper, step=1, n_decay=50, scale=1.0, skip=False)
    p_full = cupy.asarray(p_host)
    gpu.adam_update(p_full[::2], cupy.asarray(g_host)[::2], cupy.zeros(100), cupy.zeros(100), hyper, step=1,
                    n_decay=50, scale=1.0, skip=False)
    np.testing.assert_allclose(host(p_full)[::2], p_ref, rtol=1e-14)
    np.testing.assert_array_equal(host(p_full)[1::2], p_host[1::2])


@pytest.mark.parametrize("make", [lambda: Adam(lr=1e-2, weight_decay=1e-3), lambda: AdamW(lr=1e-2),
                                  lambda: RMSprop(lr=1e-3, momentum=0.9, centered=True)],
                         ids=["adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_objects_on_gpu_equal_numpy(gpu, ref, make, dtype, rng):
    """The optimizer classes drive the kernels exactly as they drive the reference."""
    size = 5003
    p_host = draw(rng, size, dtype)
    grads = [draw(rng, size, dtype) for _ in range(4)]
    on_cpu, on_gpu = make(), make()
    p_ref, p_gpu = p_host.copy(), cupy.asarray(p_host)
    for g in grads:
        on_cpu.step(ref, p_ref, g, weight_decay=1e-3, n_decay=4000, scale=dtype(0.9))
        on_gpu.step(gpu, p_gpu, cupy.asarray(g), weight_decay=1e-3, n_decay=4000,
                    scale=cupy.asarray(dtype(0.9)), skip=cupy.zeros((), dtype=bool))
    assert_bitwise(p_gpu, p_ref)


@pytest.mark.parametrize("make", [lambda: SGD(lr=1e-3, momentum=0.9), lambda: Adam(lr=1e-3, weight_decay=1e-30),
                                  lambda: RMSprop(lr=1e-3, momentum=0.5, centered=True)],
                         ids=["sgd", "adam", "rmsprop"])
def test_float32_updates_keep_subnormals_as_numpy_does(gpu, ref, make, rng):
    """Gradients and parameters down to float32's subnormal range (Adam's second moment of a
    1e-20 gradient is ~1e-43): no flush to zero on the device, where CuPy compiles with
    -ftz=true, so the updates stay equal to the reference bit for bit."""
    size = 3001
    mags = np.array([1e-20, 1e-30, 1e-38, 3e-41, 1.0], dtype=np.float64)
    p_host = (draw(rng, size, np.float64) * mags[rng.integers(len(mags), size=size)]).astype(np.float32)
    grads = [(draw(rng, size, np.float64) * mags[rng.integers(len(mags), size=size)]).astype(np.float32)
             for _ in range(3)]
    assert (np.abs(grads[0]) < np.finfo(np.float32).tiny).any()     # subnormals in the input
    on_cpu, on_gpu = make(), make()
    p_ref, p_gpu = p_host.copy(), cupy.asarray(p_host)
    for g in grads:
        on_cpu.step(ref, p_ref, g, weight_decay=1e-30, n_decay=2000, scale=np.float32(1.0))
        on_gpu.step(gpu, p_gpu, cupy.asarray(g), weight_decay=1e-30, n_decay=2000, scale=cupy.ones((), np.float32),
                    skip=cupy.zeros((), dtype=bool))
    assert_bitwise(p_gpu, p_ref)
    state = {"sgd": ["velocity"], "adam": ["exp_avg", "exp_avg_sq"], "rmsprop": ["square_avg", "grad_avg"]}
    for name in state[on_cpu.name]:
        assert_bitwise(getattr(on_gpu, name), getattr(on_cpu, name))
    if on_cpu.name == "adam":
        assert ((host(on_gpu.exp_avg_sq) > 0) & (host(on_gpu.exp_avg_sq) < np.finfo(np.float32).tiny)).any()
