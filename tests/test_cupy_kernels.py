"""Each fused CUDA kernel (through ``CupyBackend``) against its NumPy twin (``NumpyBackend``).

Fresh random inputs (never zeros), odd widths (1, 3, 1000, 32768), sizes that wrap the
capped grids of the 1-D and the row kernels, both dtypes, extreme logits, aliasing,
bitwise determinism, and the fallbacks to the reference for what the kernels do not take.
Needs a GPU (marked ``gpu``; conftest skips these cleanly without one, and the module is
skipped when CuPy is not installed at all).

Tolerances are in units of the dtype's machine epsilon: the kernels round like the
reference except where an accumulation order or a libm differs (a few ulp), and the
reductions accumulate in double.
"""
from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import gpunet as gn  # noqa: E402
from gpunet.activations import KERNEL_ACTIVATIONS  # noqa: E402
from gpunet.cuda import layout, sources  # noqa: E402
from gpunet.cupy_backend import CupyBackend  # noqa: E402
from gpunet.optim import SGDHyper  # noqa: E402
from conftest import ELEMENTWISE_ACTIVATIONS  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
ACTS = ELEMENTWISE_ACTIVATIONS
# 1-D kernels cap their grid at MAX_GRID_1D blocks of BLOCK threads; this many elements makes
# every thread loop (and is past the 65535 * 256 mark of the old 1-D grid limit)
WRAP_1D = 65535 * 256 + 4099
# row kernels: one warp per row for short rows (8 rows per block), one block for long rows
WRAP_WARP_ROWS = layout.MAX_GRID_ROWS * (layout.BLOCK // 32) + 77
WRAP_BLOCK_ROWS = layout.MAX_GRID_ROWS + 77


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


def eps(dtype):
    return float(np.finfo(dtype).eps)


def draw(rng, shape, dtype, scale=2.0):
    """Normal draws of ``dtype`` on the host with no exact zeros."""
    x = rng.normal(scale=scale, size=shape)
    x[x == 0] = 0.25
    return x.astype(dtype)


def host(x):
    return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else np.asarray(x)


def assert_near(got, want, dtype, ulps=8, scale=None):
    """|got - want| <= ulps * eps * (|want| + scale), scale defaulting to max |want|."""
    got = np.asarray(host(got), dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 1.0
    tol = ulps * eps(dtype) * (np.abs(want) + scale)
    bad = ~(np.abs(got - want) <= tol)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise AssertionError(f"{bad.sum()} of {bad.size} elements differ; first at flat index {i}: "
                             f"got {got.ravel()[i]!r}, want {want.ravel()[i]!r}, tol {tol.ravel()[i]!r}")


def assert_bitwise(a, b):
    a, b = host(a), host(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


# ---- bias + activation forward ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 1000), (3, 32768), (1000, 1), (33, 257)])
@pytest.mark.parametrize("act_name", list(ACTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_matches_reference(gpu, ref, act_name, shape, dtype, rng):
    act = ACTS[act_name]
    z_host, b_host = draw(rng, shape, dtype), draw(rng, shape[1:], dtype)
    want = ref.bias_act(z_host.copy(), b_host, act)
    z = cupy.asarray(z_host)
    result = gpu.bias_act(z, cupy.asarray(b_host), act)
    assert result is z                      # in place
    assert_near(z, want, dtype, ulps=8)


@pytest.mark.parametrize("act_name", ["sigmoid", "relu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_grid_wrap(gpu, ref, act_name, dtype, rng):
    cols = 257                                # odd: the carried column index wraps unevenly
    rows = -(-WRAP_1D // cols)
    act = ACTS[act_name]
    z_host, b_host = draw(rng, (rows, cols), dtype), draw(rng, (cols,), dtype)
    want = ref.bias_act(z_host.copy(), b_host, act)
    z = cupy.asarray(z_host)
    gpu.bias_act(z, cupy.asarray(b_host), act)
    assert_near(z, want, dtype, ulps=8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_saturates_without_overflow(gpu, ref, dtype, rng):
    big = 1e4 if dtype == np.float32 else 1e30
    z_host = (draw(rng, (9, 31), dtype) * dtype(big / 4)).astype(dtype)
    b_host = draw(rng, (31,), dtype)
    for act in (gn.Sigmoid(), gn.Sigmoid(c=2.0, beta=3.0), gn.Tanh(), gn.LeakyReLU(0.2)):
        want = ref.bias_act(z_host.copy(), b_host, act)
        got = gpu.bias_act(cupy.asarray(z_host), cupy.asarray(b_host), act)
        assert np.isfinite(host(got)).all()
        assert_near(got, want, dtype, ulps=8)


# ---- activation backward ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 1000), (3, 32768), (33, 257)])
@pytest.mark.parametrize("act_name", list(ACTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_matches_reference(gpu, ref, act_name, shape, dtype, rng):
    act = ACTS[act_name]
    a_host = act.forward(np, draw(rng, shape, dtype)).astype(dtype)
    g_host = draw(rng, shape, dtype, scale=1.0)
    want = ref.act_backward(g_host.copy(), a_host, act)
    grad, a = cupy.asarray(g_host), cupy.asarray(a_host)
    result = gpu.act_backward(grad, a, act)
    assert result is grad
    # tanh's 1 - a*a may be contracted to an FMA on the GPU: absolute error ~ eps * |grad|
    assert_near(grad, want, dtype, ulps=8, scale=float(np.abs(g_host).max()))
    np.testing.assert_array_equal(host(a), a_host)   # the saved output is read only


@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_grid_wrap(gpu, ref, dtype, rng):
    act = gn.Sigmoid(c=1.5, beta=0.5)
    a_host = act.forward(np, draw(rng, (WRAP_1D,), dtype)).astype(dtype)
    g_host = draw(rng, (WRAP_1D,), dtype)
    want = ref.act_backward(g_host.copy(), a_host, act)
    grad = cupy.asarray(g_host)
    gpu.act_backward(grad, cupy.asarray(a_host), act)
    assert_near(grad, want, dtype, ulps=8, scale=float(np.abs(g_host).max()))


# ---- bias gradient (column sums) ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 1), (1025, 1000), (3, 32768), (70001, 3),
                                   (4096, 257), (2, 65535 * 32 + 45)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_matches_reference(gpu, ref, shape, dtype, rng):
    d_host = draw(rng, shape, dtype)
    want = ref.bias_grad(d_host.astype(np.float64))     # the twin, in float64
    got = gpu.bias_grad(cupy.asarray(d_host))
    assert got.dtype == dtype and got.shape == (shape[1],)
    # accumulated in double, rounded once to the dtype; in float64 the kernel's summation
    # order differs from NumPy's pairwise one: the error is bounded by eps times the column's
    # sum of |d| (sqrt(N) * max|d| was too tight: 3.7e-13 against 3.66e-13 at 1025 rows)
    scale = np.abs(d_host.astype(np.float64)).sum(axis=0)
    assert_near(got, want, dtype, ulps=4, scale=scale if dtype == np.float64 else 0.0)
    out = cupy.empty(shape[1], dtype=dtype)
    assert gpu.bias_grad(cupy.asarray(d_host), out=out) is out
    assert_bitwise(out, got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_is_deterministic(gpu, dtype, rng):
    delta = cupy.asarray(draw(rng, (70001, 37), dtype))   # several row chunks: two-pass sum
    assert layout.column_sums_chunks(*delta.shape)[0] > 1
    assert_bitwise(gpu.bias_grad(delta), gpu.bias_grad(delta))


# ---- sum of squares -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3, 1000, 32768, WRAP_1D])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq_matches_reference(gpu, ref, size, dtype, rng):
    x_host = draw(rng, (size,), dtype)
    want = float(ref.sumsq(x_host.astype(np.float64)))
    got = gpu.sumsq(cupy.asarray(x_host))
    assert isinstance(got, cupy.ndarray) and got.shape == () and got.dtype == dtype
    # float32: one rounding of a double sum; float64: the double sums' own rounding (bounded by
    # the ~64 terms per thread plus the tree depth, in ulps of the positive total)
    assert_near(got, want, dtype, ulps=2 if dtype == np.float32 else 256, scale=0.0)
    assert_bitwise(got, gpu.sumsq(cupy.asarray(x_host)))


def test_sumsq_of_a_matrix(gpu, rng):
    x_host = draw(rng, (7, 3), np.float64)
    assert_near(gpu.sumsq(cupy.asarray(x_host)), (x_host ** 2).sum(), np.float64, ulps=8, scale=0.0)


# ---- softmax + cross-entropy ---------------------------------------------------------------
XENT_SHAPES = [(1, 1), (5, 3), (7, 10), (3, 1000), (3, 1024), (3, 1025), (4, 4097), (4, 32768),
               (WRAP_WARP_ROWS, 3), (WRAP_BLOCK_ROWS, 1100)]


@pytest.fixture(params=layout.LONG_ROW_VARIANTS)
def long_rows(request, monkeypatch):
    """Each long-row variant of the row kernels in turn (GPUNET_LONG_ROWS)."""
    monkeypatch.setenv("GPUNET_LONG_ROWS", request.param)
    return request.param


def reference_xent(ref, z_host, labels_host):
    grad = np.empty_like(z_host)
    loss = ref.softmax_xent(z_host.copy(), labels_host, grad)
    return float(loss), grad


def assert_xent_close(loss, grad, want_loss, want_grad, dtype, rows):
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == dtype
    # exp/log differ by an ulp or two and the row sums are ordered differently: the error is
    # that of log-sum-exp, a few eps relative to the row's log-sum-exp (<= ~|z| + log C)
    assert_near(loss, want_loss, dtype, ulps=64, scale=max(1.0, abs(want_loss)))
    assert_near(grad, want_grad, dtype, ulps=64, scale=1.0 / rows)


@pytest.mark.parametrize("shape", XENT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_matches_reference(gpu, ref, shape, dtype, rng, long_rows):
    rows, cols = shape
    z_host = draw(rng, shape, dtype, scale=4.0)
    labels_host = rng.integers(0, cols, size=rows)
    want_loss, want_grad = reference_xent(ref, z_host, labels_host)
    logits = cupy.asarray(z_host)
    grad = cupy.empty(shape, dtype=dtype)
    loss = gpu.softmax_xent(logits, cupy.asarray(labels_host), grad)
    assert_xent_close(loss, grad, want_loss, want_grad, dtype, rows)
    np.testing.assert_array_equal(host(logits), z_host)   # logits untouched when not aliased


@pytest.mark.parametrize("shape", [(7, 10), (3, 1025), (4, 32768), (WRAP_WARP_ROWS, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_with_row_scale_matches_reference(gpu, ref, shape, dtype, rng, long_rows):
    """Weighted examples: the kernel's per-row losses and gradient rows, scaled after it."""
    rows, cols = shape
    z_host = draw(rng, shape, dtype, scale=4.0)
    labels_host = rng.integers(0, cols, size=rows)
    scale_host = (rng.random(rows) * 2).astype(dtype)
    want_grad = np.empty_like(z_host)
    want_loss = float(ref.softmax_xent(z_host.copy(), labels_host, want_grad, scale_host))
    grad = cupy.empty(shape, dtype=dtype)
    loss = gpu.softmax_xent(cupy.asarray(z_host), cupy.asarray(labels_host), grad, cupy.asarray(scale_host))
    assert_xent_close(loss, grad, want_loss, want_grad, dtype, rows)


@pytest.mark.parametrize("cols", [3, 1000, 1025, 32768])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_grad_may_alias_logits(gpu, cols, dtype, rng, long_rows):
    z_host = draw(rng, (9, cols), dtype, scale=4.0)
    labels = cupy.asarray(rng.integers(0, cols, size=9))
    separate = cupy.empty((9, cols), dtype=dtype)
    loss_separate = gpu.softmax_xent(cupy.asarray(z_host), labels, separate)
    logits = cupy.asarray(z_host)
    loss_alias = gpu.softmax_xent(logits, labels, logits)
    assert_bitwise(logits, separate)
    assert_bitwise(loss_alias, loss_separate)


@pytest.mark.parametrize("cols", [4, 1000, 5000])
@pytest.mark.parametrize("dtype, big", [(np.float32, 1e4), (np.float64, 1e4), (np.float64, 1e30)])
def test_softmax_xent_extreme_logits(gpu, ref, cols, dtype, big, rng, long_rows):
    rows = 6
    z_host = (draw(rng, (rows, cols), np.float64, scale=1.0) * big / 10).astype(dtype)
    z_host[:, 0] = big
    z_host[:, 1] = -big
    z_host[0, 2] = big                      # a tie for the maximum
    labels_host = np.array([0, 1, 2, 1, cols - 1, 0])
    want_loss, want_grad = reference_xent(ref, z_host.astype(np.float64), labels_host)
    grad = cupy.empty((rows, cols), dtype=dtype)
    loss = gpu.softmax_xent(cupy.asarray(z_host), cupy.asarray(labels_host), grad)
    assert np.isfinite(host(loss)) and np.isfinite(host(grad)).all()
    assert_xent_close(loss, grad, want_loss, want_grad, dtype, rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_is_deterministic(gpu, dtype, rng, long_rows):
    for shape in [(WRAP_WARP_ROWS, 10), (300, 32768)]:
        logits = cupy.asarray(draw(rng, shape, dtype, scale=4.0))
        labels = cupy.asarray(rng.integers(0, shape[1], size=shape[0]))
        g1, g2 = cupy.empty(shape, dtype=dtype), cupy.empty(shape, dtype=dtype)
        l1 = gpu.softmax_xent(logits, labels, g1)
        l2 = gpu.softmax_xent(logits, labels, g2)
        assert_bitwise(l1, l2)
        assert_bitwise(g1, g2)


@pytest.mark.parametrize("cols", [1025, 5000, 20000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_without_the_shared_memory_copy_agree_bitwise(gpu, monkeypatch, cols, dtype, rng):
    """Rows too long for shared memory are read twice instead of kept: same arithmetic, same bits."""
    monkeypatch.setenv("GPUNET_LONG_ROWS", "shared")
    z = cupy.asarray(draw(rng, (37, cols), dtype, scale=4.0))
    labels = cupy.asarray(rng.integers(0, cols, size=37))
    kept = cupy.empty(z.shape, dtype=dtype)
    loss_kept = gpu.softmax_xent(z, labels, kept)
    probs_kept = gpu.softmax(z)
    assert layout.row_layout(37, cols, np.dtype(dtype).itemsize).mode == 1
    monkeypatch.setattr(layout, "max_dynamic_smem", lambda: 0)
    assert layout.row_layout(37, cols, np.dtype(dtype).itemsize).mode == 0
    reread = cupy.empty(z.shape, dtype=dtype)
    assert_bitwise(gpu.softmax_xent(z, labels, reread), loss_kept)
    assert_bitwise(reread, kept)
    assert_bitwise(gpu.softmax(z), probs_kept)


def _xent_kernel_args(z, labels, grad, row_loss, last):
    """The softmax_xent_* kernels' arguments with no bias, row scale or hits."""
    rows, cols = z.shape
    return (z, z, np.int32(0), labels, z, np.int32(0), np.int64(rows), np.int64(cols), grad, row_loss,
            row_loss.view(np.uint8), np.int32(0), cupy.empty((), z.dtype), cupy.zeros(1, np.uint32), np.int32(last))


def test_register_rows_launched_wrongly_give_nan_losses(rng):
    z = cupy.asarray(draw(rng, (5, 2000), np.float32))
    labels = cupy.asarray(rng.integers(0, 2000, size=5))
    grad = cupy.empty((5, 2000), np.float32)
    row_loss = cupy.zeros(5, np.float64)
    kernel = sources.get_kernel("softmax_xent", "softmax_xent_block_regs_f32")
    kernel((5,), (256,), _xent_kernel_args(z, labels, grad, row_loss, 2))   # not 1024
    assert np.isnan(host(row_loss)).all()
    row_loss[...] = 0      # 32 doubles per thread is not an instance: NaN losses too
    z64 = z.astype(np.float64)
    kernel64 = sources.get_kernel("softmax_xent", "softmax_xent_block_regs_f64")
    kernel64((5,), (1024,), _xent_kernel_args(z64, labels, z64.copy(), row_loss, 32))
    assert np.isnan(host(row_loss)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_unknown_activation_id_writes_nan(dtype, rng):
    """Every kernel that switches on an activation id writes NaN for an id without a case
    (never a silent identity, whose f' = 1 would look like a plausible gradient)."""
    unknown = np.int32(max(KERNEL_ACTIVATIONS) + 1)
    suffix = "f32" if np.dtype(dtype) == np.float32 else "f64"
    t = np.dtype(dtype).type
    rows, cols = 9, 301
    z = cupy.asarray(draw(rng, (rows, cols), dtype))
    b = cupy.asarray(draw(rng, (cols,), dtype))
    sources.get_kernel("activations", f"bias_act_{suffix}")(
        (layout.grid_1d(z.size),), (layout.BLOCK,), (z, b, np.int64(rows), np.int64(cols), unknown, t(1), t(1)))
    assert np.isnan(host(z)).all()
    grad, a = cupy.asarray(draw(rng, (rows, cols), dtype)), cupy.asarray(draw(rng, (rows, cols), dtype))
    sources.get_kernel("activations", f"act_backward_{suffix}")(
        (layout.grid_1d(grad.size),), (layout.BLOCK,), (grad, a, np.int64(grad.size), unknown, t(1), t(1)))
    assert np.isnan(host(grad)).all()
    y, out = cupy.asarray(draw(rng, (rows, cols), dtype)), cupy.empty((rows, cols), dtype)
    grid = layout.reduction_grid(a.size)
    block_sums = cupy.zeros(grid, np.float64)
    loss = cupy.zeros((), dtype)
    sources.get_kernel("mse", f"mse_grad_{suffix}")(
        (grid,), (layout.BLOCK,), (a, a, np.int32(0), y, a, np.int32(0), np.int64(rows), np.int64(cols), unknown,
                                   t(1), t(1), out, block_sums, loss, cupy.zeros(1, np.uint32)))
    assert np.isnan(host(out)).all() and np.isnan(host(block_sums)).all() and np.isnan(host(loss))
    grad = cupy.asarray(draw(rng, (rows, cols), dtype))
    bias_grad = cupy.zeros(cols, dtype)
    sources.get_kernel("activations", f"act_backward_colsum_{suffix}")(
        (layout.grid_1d(cols),), (32, 8), (grad, a, np.int64(rows), np.int64(cols), np.int64(rows), unknown, t(1),
                                           t(1), block_sums, bias_grad))
    assert np.isnan(host(grad)).all() and np.isnan(host(bias_grad)).all()


@pytest.mark.parametrize("kernel", ["softmax_xent_warp", "softmax_warp", "softmax_xent_block_regs",
                                    "softmax_block_regs"])
def test_a_slot_count_without_an_instance_writes_nan_rows(kernel, rng):
    rows, cols = 7, 900 if "warp" in kernel else 3000
    z = cupy.asarray(draw(rng, (rows, cols), np.float32))
    out = cupy.zeros((rows, cols), np.float32)
    threads = 256 if "warp" in kernel else layout.BLOCK_REGS_THREADS
    fn = sources.get_kernel("softmax_xent", f"{kernel}_f32")
    if kernel.startswith("softmax_xent"):
        labels = cupy.asarray(rng.integers(0, cols, size=rows))
        row_loss = cupy.zeros(rows, np.float64)
        fn((3,), (threads,), _xent_kernel_args(z, labels, out, row_loss, 3))
        assert np.isnan(host(row_loss)).all()
    else:
        fn((3,), (threads,), (z, np.int64(rows), np.int64(cols), np.int32(3), out))
    assert np.isnan(host(out)).all()


def test_softmax_xent_takes_other_integer_labels(gpu, rng):
    z = cupy.asarray(draw(rng, (11, 7), np.float32))
    labels = rng.integers(0, 7, size=11)
    g64, g32 = cupy.empty((11, 7), np.float32), cupy.empty((11, 7), np.float32)
    l64 = gpu.softmax_xent(z, cupy.asarray(labels.astype(np.int64)), g64)
    l32 = gpu.softmax_xent(z, cupy.asarray(labels.astype(np.int32)), g32)
    assert_bitwise(l64, l32)
    assert_bitwise(g64, g32)


def test_softmax_xent_label_out_of_range_gives_nan_loss(gpu, rng):
    """No host check per step: a bad label must surface as a non-finite loss, not a bad read."""
    z = cupy.asarray(draw(rng, (4, 5), np.float64))
    grad = cupy.empty((4, 5), np.float64)
    assert np.isnan(host(gpu.softmax_xent(z, cupy.asarray(np.array([0, 5, 1, 2])), grad)))
    assert np.isnan(host(gpu.softmax_xent(z, cupy.asarray(np.array([0, 1, -1, 2])), grad)))


def test_softmax_xent_allocates_no_probabilities_or_one_hot(gpu, rng, allocation_log):
    rows, cols = 512, 1000
    logits = cupy.asarray(draw(rng, (rows, cols), np.float32))
    labels = cupy.asarray(rng.integers(0, cols, size=rows))
    grad = cupy.empty((rows, cols), np.float32)
    gpu.softmax_xent(logits, labels, grad)          # warm-up: compiles, makes the row scratch
    with allocation_log() as log:
        gpu.softmax_xent(logits, labels, grad)
    # only the 0-d loss it returns; nothing of size rows*cols (probabilities, one-hot)
    assert len(log.sizes) <= 1 and all(size < rows * 4 for size in log.sizes), log.sizes


# ---- row-wise softmax ----------------------------------------------------------------------
# tiny probabilities may be subnormal, where an ulp is a large relative step: allow that much
SUBNORMAL_SLACK = {np.float32: 1e3 * float(np.finfo(np.float32).tiny), np.float64: 1e3 * float(np.finfo(np.float64).tiny)}


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 1000), (3, 1025), (2, 32768), (WRAP_WARP_ROWS, 3),
                                   (WRAP_BLOCK_ROWS, 1100)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_reference(gpu, ref, shape, dtype, rng, long_rows):
    z_host = draw(rng, shape, dtype, scale=4.0)
    want = ref.softmax(z_host.copy())
    got = gpu.softmax(cupy.asarray(z_host))
    assert_near(got, want, dtype, ulps=64, scale=SUBNORMAL_SLACK[dtype])
    z = cupy.asarray(z_host)
    assert gpu.softmax(z, out=z) is z                 # in place
    assert_bitwise(z, got)


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e4), (np.float64, 1e30)])
def test_softmax_extreme_logits(gpu, ref, dtype, big, rng):
    z_host = (draw(rng, (5, 2000), np.float64, scale=1.0) * big / 10).astype(dtype)
    z_host[:, 7] = big
    want = ref.softmax(z_host.astype(np.float64))
    got = host(gpu.softmax(cupy.asarray(z_host)))
    assert np.isfinite(got).all()
    assert_near(got, want, dtype, ulps=64, scale=SUBNORMAL_SLACK[dtype])


# ---- MSE at the output ------------------------------------------------------------------------
MSE_OUTPUTS = {"identity": gn.Identity(), "sigmoid": gn.Sigmoid(), "scaled_sigmoid": gn.Sigmoid(c=2.0, beta=0.5),
               "tanh": gn.Tanh()}


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 1000), (2, 32768), (-(-WRAP_1D // 3), 3)])
@pytest.mark.parametrize("out_name", list(MSE_OUTPUTS))
@pytest.mark.parametrize("alias", [False, True], ids=["separate", "grad_is_a"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_grad_matches_reference(gpu, ref, out_name, shape, alias, dtype, rng):
    if shape[0] * shape[1] >= WRAP_1D and (alias or out_name not in ("sigmoid",)):
        pytest.skip("the grid-wrapping size is run once per dtype")
    act = MSE_OUTPUTS[out_name]
    a_host = act.forward(np, draw(rng, shape, dtype)).astype(dtype)
    y_host = draw(rng, shape, dtype, scale=1.0)
    want_grad = np.empty_like(a_host)
    ref.mse_grad(a_host.copy(), y_host, act, want_grad)
    a = cupy.asarray(a_host)
    grad = a if alias else cupy.empty(shape, dtype=dtype)
    loss = gpu.mse_grad(a, cupy.asarray(y_host), act, grad)
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == dtype
    # the loss sums in double: compare with the float64 truth (the float32 twin sums in float32)
    a64, y64 = a_host.astype(np.float64), y_host.astype(np.float64)
    assert_near(loss, ((a64 - y64) ** 2).sum() / (2 * shape[0]), dtype, ulps=4 if dtype == np.float32 else 256,
                scale=0.0)
    assert_near(grad, want_grad, dtype, ulps=8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_grad_is_deterministic(gpu, dtype, rng):
    a = cupy.asarray(draw(rng, (5000, 333), dtype))
    y = cupy.asarray(draw(rng, (5000, 333), dtype))
    g1, g2 = cupy.empty_like(a), cupy.empty_like(a)
    l1 = gpu.mse_grad(a, y, gn.Tanh(), g1)
    l2 = gpu.mse_grad(a, y, gn.Tanh(), g2)
    assert_bitwise(l1, l2)
    assert_bitwise(g1, g2)


# ---- losses with their canonical link: sigmoid + BCE, exp + Poisson --------------------------
def canonical_targets(name, rng, shape, dtype):
    if name == "sigmoid_bce":   # indicators and soft probabilities
        y = np.where(rng.random(shape) < 0.5, rng.integers(0, 2, size=shape), rng.random(shape))
    else:                       # counts, zeros included
        y = rng.poisson(2.0, size=shape).astype(np.float64)
    return y.astype(dtype)


def canonical_truth(name, z, y, row_scale):
    """Loss and gradient in float64 from the definitions (not from the NumPy twin)."""
    z, y = z.astype(np.float64), y.astype(np.float64)
    n = z.shape[0]
    r = np.ones(n) if row_scale is None else row_scale.astype(np.float64)
    if name == "sigmoid_bce":
        terms, link = np.logaddexp(0.0, z) - y * z, 0.5 * (1.0 + np.tanh(0.5 * z))
    else:
        link = np.exp(z)
        terms = link - y * z + y * np.log(np.where(y > 0, y, 1.0)) - y
    return (terms.sum(axis=1) * r).sum() / n, (link - y) / n * r[:, None]


@pytest.mark.parametrize("name", ["sigmoid_bce", "poisson_exp"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 1000), (2, 32768), (-(-WRAP_1D // 3), 3)])
@pytest.mark.parametrize("alias", [False, True], ids=["separate", "grad_is_logits"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "row_scale"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_canonical_losses_match_their_twins(gpu, ref, name, shape, alias, weighted, dtype, rng):
    if shape[0] * shape[1] >= WRAP_1D and (alias or weighted):
        pytest.skip("the grid-wrapping size is run once per loss and dtype")
    z_host = draw(rng, shape, dtype, scale=3.0 if name == "sigmoid_bce" else 1.0)
    y_host = canonical_targets(name, rng, shape, dtype)
    scale_host = (rng.random(shape[0]) * 2).astype(dtype) if weighted else None
    twin = getattr(ref, name)
    want_grad = np.empty_like(z_host)
    want_loss = float(twin(z_host.copy(), y_host, want_grad, scale_host))
    z = cupy.asarray(z_host)
    grad = z if alias else cupy.empty(shape, dtype=dtype)
    loss = getattr(gpu, name)(z, cupy.asarray(y_host), grad, None if scale_host is None else cupy.asarray(scale_host))
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == dtype
    true_loss, true_grad = canonical_truth(name, z_host, y_host, scale_host)
    # the kernel sums in double: near the float64 truth; the float32 twin sums in float32
    assert_near(loss, true_loss, dtype, ulps=16 if dtype == np.float32 else 512, scale=0.0)
    assert_near(loss, want_loss, dtype, ulps=64 if dtype == np.float32 else 4096, scale=0.0)
    assert_near(grad, true_grad, dtype, ulps=16)
    assert_near(grad, want_grad, dtype, ulps=16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_canonical_losses_at_extreme_logits(gpu, ref, dtype, rng):
    """Saturated sigmoids stay finite (BCE's exp only sees -|z|); a Poisson rate that overflows
    is the inf the twin computes too (and fit flags it as divergence)."""
    big = 80.0 if dtype == np.float32 else 700.0
    z_host = np.array([[big, -big, 0.0], [-big, big, 1e-3]], dtype=dtype)
    y_host = np.array([[1.0, 0.0, 0.5], [1.0, 0.0, 1.0]], dtype=dtype)
    want_grad = np.empty_like(z_host)
    want_loss = float(ref.sigmoid_bce(z_host.copy(), y_host, want_grad))
    grad = cupy.empty_like(cupy.asarray(z_host))
    loss = gpu.sigmoid_bce(cupy.asarray(z_host), cupy.asarray(y_host), grad)
    assert np.isfinite(float(host(loss))) and np.isfinite(host(grad)).all()
    assert_near(loss, want_loss, dtype, ulps=16, scale=0.0)
    assert_near(grad, want_grad, dtype, ulps=16)
    counts = np.array([[0.0, 3.0]], dtype=dtype)
    wide = np.array([[big * 2, 1.0]], dtype=dtype)
    grad = cupy.empty((1, 2), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        want = float(ref.poisson_exp(wide.copy(), counts, np.empty_like(wide)))
    loss = gpu.poisson_exp(cupy.asarray(wide), cupy.asarray(counts), grad)
    assert np.isinf(want) and np.isinf(float(host(loss)))


@pytest.mark.parametrize("act_name", list(ACTS) + ["softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activate_applies_an_output_activation_alone(gpu, ref, act_name, dtype, rng):
    """Inference under a loss that folds its activation in: f applied in place to the logits."""
    act = gn.Softmax() if act_name == "softmax" else ACTS[act_name]
    z_host = draw(rng, (37, 129), dtype)
    want = ref.activate(z_host.copy(), act)
    z = cupy.asarray(z_host)
    got = gpu.activate(z, act)
    assert got is z
    assert_near(z, want, dtype, ulps=16)


# ---- the SGD update ----------------------------------------------------------------------------
SGD_CASES = [
    dict(momentum=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(momentum=0.0, nesterov=False, weight_decay=5e-2),
    dict(momentum=0.5, nesterov=False, weight_decay=1e-3),
]


@pytest.mark.parametrize("size", [1, 3, 1000, 32768, WRAP_1D])
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_matches_reference_bitwise(gpu, ref, case, size, dtype, rng):
    """Explicitly rounded arithmetic in the reference's order: equal to NumPy bit for bit."""
    if size == WRAP_1D and case not in (0, 2):
        pytest.skip("the grid-wrapping size is run for two cases")
    cfg = SGD_CASES[case]
    n_decay = max(size * 2 // 3, 1)
    p_host, v_host = draw(rng, (size,), dtype), draw(rng, (size,), dtype)
    p_ref, v_ref = p_host.copy(), v_host.copy()
    p_gpu, v_gpu = cupy.asarray(p_host), cupy.asarray(v_host)
    for step in range(3):
        g_host = draw(rng, (size,), dtype)
        scale = dtype(0.25 + 0.5 * step)
        hyper = SGDHyper(lr=0.05, **cfg)
        ref.sgd_update(p_ref, g_host, v_ref if cfg["momentum"] else None, hyper, n_decay=n_decay,
                       scale=scale, skip=False)
        gpu.sgd_update(p_gpu, cupy.asarray(g_host), v_gpu if cfg["momentum"] else None, hyper, n_decay=n_decay,
                       scale=cupy.asarray(scale), skip=cupy.zeros((), dtype=bool))
    assert_bitwise(p_gpu, p_ref)
    assert_bitwise(v_gpu, v_ref)         # untouched (still v_host) when momentum == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_host_scale_and_skip(gpu, ref, dtype, rng):
    p_host, g_host, v_host = (draw(rng, (777,), dtype) for _ in range(3))
    kwargs = dict(hyper=SGDHyper(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), n_decay=500)
    p_ref, v_ref = p_host.copy(), v_host.copy()
    ref.sgd_update(p_ref, g_host, v_ref, scale=1.0, skip=False, **kwargs)
    ref.sgd_update(p_ref, g_host, v_ref, scale=0.3, skip=False, **kwargs)
    p, v, g = cupy.asarray(p_host), cupy.asarray(v_host), cupy.asarray(g_host)
    gpu.sgd_update(p, g, v, scale=1.0, skip=False, **kwargs)
    gpu.sgd_update(p, g, v, scale=0.3, skip=False, **kwargs)
    assert_bitwise(p, p_ref)
    assert_bitwise(v, v_ref)
    before_p, before_v = host(p).copy(), host(v).copy()
    gpu.sgd_update(p, g, v, scale=1.0, skip=True, **kwargs)
    gpu.sgd_update(p, g, v, scale=cupy.asarray(dtype(0.5)), skip=cupy.ones((), dtype=bool), **kwargs)
    np.testing.assert_array_equal(host(p), before_p)
    np.testing.assert_array_equal(host(v), before_v)
    np.testing.assert_array_equal(host(g), g_host)


def test_sgd_update_skip_is_read_on_the_device(gpu, rng):
    """The flag is computed by a kernel and never read back: a NaN loss skips the update."""
    p_host = draw(rng, (100,), np.float32)
    p = cupy.asarray(p_host)
    loss = cupy.asarray(np.float32(np.nan))
    skip = ~cupy.isfinite(loss)
    gpu.sgd_update(p, cupy.asarray(draw(rng, (100,), np.float32)), None, SGDHyper(lr=0.1), n_decay=50, scale=1.0,
                   skip=skip)
    np.testing.assert_array_equal(host(p), p_host)


# ---- fallbacks to the reference ----------------------------------------------------------------
def _forbid_kernels(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched for an input the kernels do not take")
    monkeypatch.setattr(sources, "get_kernel", refuse)


def test_non_contiguous_inputs_use_the_reference(gpu, ref, monkeypatch, rng):
    z_host = draw(rng, (6, 10), np.float64)
    b_host = draw(rng, (5,), np.float64)
    labels_host = rng.integers(0, 5, size=6)
    want_act = ref.bias_act(z_host[:, ::2].copy(), b_host, gn.Tanh())
    want_grad = np.empty((6, 5))
    want_loss = float(ref.softmax_xent(z_host[:, ::2].copy(), labels_host, want_grad))
    want_sums = ref.bias_grad(z_host[:, ::2].copy())
    _forbid_kernels(monkeypatch)
    z = cupy.asarray(z_host)[:, ::2]                    # a strided view
    assert not z.flags.c_contiguous
    grad = cupy.empty((6, 5))
    loss = gpu.softmax_xent(z, cupy.asarray(labels_host), grad)
    assert_near(loss, want_loss, np.float64, ulps=64, scale=1.0)
    assert_near(grad, want_grad, np.float64, ulps=64, scale=1.0)
    assert_near(gpu.bias_grad(z), want_sums, np.float64, ulps=64)
    assert_near(gpu.sumsq(z), (z_host[:, ::2] ** 2).sum(), np.float64, ulps=64, scale=0.0)
    gpu.bias_act(z, cupy.asarray(b_host), gn.Tanh())
    assert_near(z, want_act, np.float64, ulps=8)


def test_uncovered_cases_use_the_reference(gpu, ref, monkeypatch, rng):
    z_host = draw(rng, (4, 6), np.float64)
    targets_host = np.eye(6)[rng.integers(0, 6, size=4)]
    a_host = gn.Softmax().forward(np, z_host)
    y_host = draw(rng, (4, 6), np.float64)
    want_soft = np.empty_like(z_host)
    want_soft_loss = float(ref.softmax_xent_onehot(z_host.copy(), targets_host, want_soft))
    want_mse = np.empty_like(a_host)
    want_mse_loss = float(ref.mse_grad(a_host.copy(), y_host, gn.Softmax(), want_mse))
    want_f16 = ref.bias_act(z_host.astype(np.float16), np.ones(6, np.float16), gn.ReLU())
    _forbid_kernels(monkeypatch)
    # one-hot targets, softmax output under MSE, float16: the reference on CuPy
    grad = cupy.empty((4, 6))
    assert_near(gpu.softmax_xent_onehot(cupy.asarray(z_host), cupy.asarray(targets_host), grad),
                want_soft_loss, np.float64, ulps=64, scale=1.0)
    assert_near(grad, want_soft, np.float64, ulps=64, scale=1.0)
    grad = cupy.empty((4, 6))
    assert_near(gpu.mse_grad(cupy.asarray(a_host), cupy.asarray(y_host), gn.Softmax(), grad), want_mse_loss,
                np.float64, ulps=64, scale=1.0)
    assert_near(grad, want_mse, np.float64, ulps=64, scale=1.0)
    got16 = gpu.bias_act(cupy.asarray(z_host.astype(np.float16)), cupy.ones(6, np.float16), gn.ReLU())
    np.testing.assert_allclose(host(got16).astype(np.float64), want_f16.astype(np.float64), rtol=1e-3)


def test_a_subclassed_activation_is_not_fused(gpu, monkeypatch, rng):
    class Doubled(gn.ReLU):     # same kind id, different math: must not reach the ReLU kernel
        def forward(self, xp, z, out=None):
            return xp.multiply(xp.maximum(z, 0), 2, out=out)

    z_host, b_host = draw(rng, (3, 4), np.float64), draw(rng, (4,), np.float64)
    _forbid_kernels(monkeypatch)
    got = gpu.bias_act(cupy.asarray(z_host), cupy.asarray(b_host), Doubled())
    np.testing.assert_allclose(host(got), 2 * np.maximum(z_host + b_host, 0))


# ---- loading ---------------------------------------------------------------------------------------
def test_every_kernel_loads_on_this_device():
    loaded = sources.load_all()
    assert set(loaded) == set(sources.kernel_sources())
    assert all(names for names in loaded.values())


def test_tf32_is_opt_in(rng):
    """Default float32 GEMMs are exact FP32 (close to a float64 product); CuPy's global
    compute-type setting is restored after gpunet's GEMM."""
    from cupy._core import _routines_linalg as linalg
    a_host, b_host = draw(rng, (256, 512), np.float32), draw(rng, (512, 128), np.float32)
    want = a_host.astype(np.float64) @ b_host.astype(np.float64)
    before = linalg.get_compute_type(np.float32)
    exact = host(CupyBackend(allow_tf32=False).matmul(cupy.asarray(a_host), cupy.asarray(b_host)))
    assert linalg.get_compute_type(np.float32) == before
    scale = np.abs(a_host).astype(np.float64) @ np.abs(b_host).astype(np.float64)
    assert (np.abs(exact - want) <= 1e-5 * scale).all()      # TF32 (10-bit mantissa) would miss this
    fast = host(CupyBackend(allow_tf32=True).matmul(cupy.asarray(a_host), cupy.asarray(b_host)))
    assert linalg.get_compute_type(np.float32) == before
    assert (np.abs(fast - want) <= 1e-2 * scale).all()
