"""One epoch of ``fit`` on data as users hold it, against the same data as a C-ordered array
of the model's dtype, in alternating rounds: a Fortran-ordered array, a strided view, a
big-endian array, float64 data for a float32 model, and a pandas DataFrame (float32, and
mixed float and integer columns). 200000 x 100 examples (20000 in the smoke run), a
100-64-10 network, batch 1024, float32. Each fit converts its input once; the ratio says
what that conversion costs against an epoch.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpunet as gn
from benchsupport import Size, describe, device_sync, mlp_step_flops

WIDTHS, BATCH = (100, 64, 10), 1024


@functools.lru_cache(maxsize=2)
def _data(rows):
    rng = np.random.default_rng(11)
    return rng.standard_normal((rows, WIDTHS[0])).astype(np.float32), rng.integers(0, WIDTHS[-1], rows)


def _layout(name, X):
    if name == "fortran":
        return np.asfortranarray(X)
    if name == "strided":
        return np.repeat(X, 2, axis=1)[:, ::2]
    if name == "big-endian":
        return X.astype(">f4")
    if name == "float64":
        return X.astype(np.float64)
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    frame = pd.DataFrame(X)
    if name == "dataframe-mixed":
        frame[0] = np.arange(len(frame)) % 7          # an integer column
    return frame


def _epoch(backend, data, y):
    net = gn.MLP(list(WIDTHS), dtype="float32", seed=0, backend=backend.name)

    def epoch():
        return net.fit(data, y, epochs=1, batch_size=BATCH, lr=0.01, momentum=0.9, progress=False)

    history = epoch()
    assert np.isfinite(history["loss"][-1])
    return epoch


@pytest.mark.parametrize("layout", ["fortran", "strided", "big-endian", "float64", "dataframe", "dataframe-mixed"])
def test_fit_layouts(benchmark, measure, request, backend, layout):
    rows = 20_000 if request.config.getoption("benchmark_disable") else 200_000
    X, y = _data(rows)
    fit_layout = _epoch(backend, _layout(layout, X), y)
    fit_c = _epoch(backend, X, y)
    sync = device_sync(backend.name)
    describe(benchmark, case="fit_layouts", impl="gpunet", backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=Size("medium", (rows, WIDTHS[0])),
             dtype="float32", flops=mlp_step_flops(WIDTHS, rows), bound="compute", layout=layout)
    measure(fit_layout, sync=sync, partners=[("c-order", fit_c, sync)])
