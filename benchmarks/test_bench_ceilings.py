"""Ceilings, measured in the same run as everything else: a large square matmul's rate per
backend and dtype (the compute ceiling) and a large copy's bandwidth (the memory ceiling).
Every other case is reported as a fraction of one of these.

Each runs twice, first and last in the session (conftest moves the "end" ones): on a shared
machine the load changes during a run, and the report keeps the faster of the two."""
from __future__ import annotations

import numpy as np
import pytest

from benchsupport import Size, assert_close, describe, device_sync

# Big enough to leave the caches and reach the library's steady rate; on the CPU short
# enough (~20-40 ms) that some rounds run unpreempted on a shared machine: the ceiling is
# the fastest round
MATMUL = {"numpy": Size("ceiling", (1024, 1024)), "cupy": Size("ceiling", (8192, 8192))}
COPY_BYTES = {"numpy": 128 * 2**20, "cupy": 1024 * 2**20}


MOMENTS = ["start", "end"]


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_ceiling(benchmark, measure, backend, dtype, moment):
    xp = backend.xp
    size = MATMUL[backend.name]
    n = size.shape[0]
    rng = np.random.default_rng(0)
    a_host = rng.standard_normal((n, n), dtype=dtype)
    b_host = rng.standard_normal((n, n), dtype=dtype)
    a, b = xp.asarray(a_host), xp.asarray(b_host)
    out = xp.empty((n, n), dtype=dtype)

    def matmul():
        return backend.matmul(a, b, out=out)   # the GEMM path the MLP cases use

    result = matmul()
    # a few rows against float64: enough to catch a wrong product, cheap at any size
    assert_close(result[:8], a_host[:8].astype(np.float64) @ b_host.astype(np.float64), dtype, "matmul")
    describe(benchmark, case="ceiling", impl="matmul", backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=size, dtype=dtype,
             flops=2 * n**3, bytes=3 * n * n * np.dtype(dtype).itemsize, bound="compute", moment=moment)
    measure(matmul, sync=device_sync(backend.name), least_rounds=20)


@pytest.mark.parametrize("moment", MOMENTS)
def test_copy_ceiling(benchmark, measure, backend, moment):
    xp = backend.xp
    nbytes = COPY_BYTES[backend.name]
    n = nbytes // 4
    src = xp.asarray(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    dst = xp.empty_like(src)

    def copy():
        xp.copyto(dst, src)   # a memcpy on the CPU, a device-to-device copy on the GPU
        return dst

    copy()
    assert bool((dst[::4099] == src[::4099]).all()) and bool((dst[-1] == src[-1]))
    describe(benchmark, case="ceiling", impl="copy", backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=Size("ceiling", (f"{nbytes // 2**20} MiB",)),
             dtype="float32", bytes=2 * nbytes, bound="memory", moment=moment)
    measure(copy, sync=device_sync(backend.name), least_rounds=20)
