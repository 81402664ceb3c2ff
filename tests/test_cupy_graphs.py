"""What a training step captured as one CUDA graph needs: gpunet's own GEMM kernel (CuPy
refuses cuBLAS during stream capture) against NumPy's matmul, in the three forms the step
uses, odd shapes, both dtypes. Marked ``gpu``: a GPU, or the host kernel emulator."""
from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from gpunet.cuda import launch  # noqa: E402
from test_cupy_kernels import DTYPES, assert_bitwise, draw, host  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture
def rng():
    return np.random.default_rng(31)


SHAPES = [(1, 1, 1), (5, 3, 7), (64, 64, 16), (65, 63, 17), (130, 70, 33), (3, 200, 129)]


def _operands(rng, m, k, n, form, dtype):
    """Host a (M, K), b (K, N) and the device views matmul gets for ``form``."""
    a, b = draw(rng, (m, k), dtype, scale=1.0), draw(rng, (k, n), dtype, scale=1.0)
    if form == "nn":
        return a, b, cupy.asarray(a), cupy.asarray(b)
    if form == "tn":     # dW = A^T delta: a arrives as the transpose of a C-contiguous (K, M)
        return a, b, cupy.asarray(np.ascontiguousarray(a.T)).T, cupy.asarray(b)
    return a, b, cupy.asarray(a), cupy.asarray(np.ascontiguousarray(b.T)).T   # delta W^T


@pytest.mark.parametrize("form", ["nn", "tn", "nt"])
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_matmul(gpu, ref, m, k, n, form, dtype, rng):
    a, b, a_dev, b_dev = _operands(rng, m, k, n, form, dtype)
    out = cupy.full((m, n), np.nan, dtype)
    launch.gemm(a_dev, b_dev, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    # each output sums k products in order: |error| <= k eps sum |a||b|
    bound = (k + 2) * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert (np.abs(host(out) - want) <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_matmul_takes_the_kernel_inside_kernel_gemms(gpu, dtype, rng):
    a, b, a_dev, b_dev = _operands(rng, 70, 40, 90, "tn", dtype)
    with gpu.kernel_gemms():
        got = gpu.matmul(a_dev, b_dev, out=cupy.empty((70, 90), dtype))
    direct = launch.gemm(a_dev, b_dev, cupy.empty((70, 90), dtype))
    assert_bitwise(got, direct)                      # the same kernel, the same bits
    again = launch.gemm(a_dev, b_dev, cupy.empty((70, 90), dtype))
    assert_bitwise(again, direct)                    # and deterministic


def test_gemm_refuses_what_it_cannot_take(rng):
    a = cupy.asarray(draw(rng, (4, 6), np.float32))
    with pytest.raises(ValueError, match="at most one transposed"):
        launch.gemm(a.T, cupy.asarray(draw(rng, (6, 4), np.float32)).T, cupy.empty((6, 6), np.float32))
    with pytest.raises(ValueError, match="shapes disagree"):
        launch.gemm(a, a, cupy.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        launch.gemm(a, a.T.astype(np.float64), cupy.empty((4, 4), np.float32))
