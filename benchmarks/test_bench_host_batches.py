"""One epoch of ``fit`` whose batches come from the host a batch at a time, against the same
data held on the device (in memory on the CPU), in alternating rounds: a memory-mapped
``.npy`` file (each batch's rows read and converted) and a ``BatchStream`` of in-memory
batches. On a GPU each batch is copied from page-locked buffers on a stream of its own while
the step before runs; the target is host/device <= 1.25 (80% of the in-device step rate).
200000 x 100 float32 examples (4096 in the smoke run), a 100-256-256-10 network, batch 1024.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpunet as gn
from benchsupport import Size, describe, device_sync, mlp_step_flops
from gpunet.data import BatchStream

WIDTHS, BATCH = (100, 256, 256, 10), 1024


@functools.lru_cache(maxsize=2)
def _data(rows):
    rng = np.random.default_rng(12)
    return rng.standard_normal((rows, WIDTHS[0])).astype(np.float32), rng.integers(0, WIDTHS[-1], rows)


@pytest.fixture(scope="module")
def memmap_file(tmp_path_factory):
    paths = {}

    def path_for(rows):
        if rows not in paths:
            paths[rows] = tmp_path_factory.mktemp("host_batches") / f"X{rows}.npy"
            np.save(paths[rows], _data(rows)[0])
        return np.load(paths[rows], mmap_mode="r")
    return path_for


def _epoch(backend, data, y):
    net = gn.MLP(list(WIDTHS), dtype="float32", seed=0, backend=backend.name)

    def epoch():
        return net.fit(data, y, epochs=1, batch_size=BATCH, lr=0.01, momentum=0.9, progress=False)

    history = epoch()
    assert np.isfinite(history["loss"][-1]) and history["accuracy"][-1] > 0.05
    return epoch


def _stream(X, y):
    return BatchStream(lambda: ((X[s:s + BATCH], y[s:s + BATCH]) for s in range(0, len(X), BATCH)),
                       n_batches=-(-len(X) // BATCH))


@pytest.mark.parametrize("source", ["memmap", "stream"])
def test_fit_host_batches(benchmark, measure, request, backend, memmap_file, source):
    rows = 4096 if request.config.getoption("benchmark_disable") else 200_000    # the smoke run: 4 batches
    X, y = _data(rows)
    fit_host = _epoch(backend, memmap_file(rows), y) if source == "memmap" else _epoch(backend, _stream(X, y), None)
    fit_device = _epoch(backend, X, y)
    sync = device_sync(backend.name)
    describe(benchmark, case="fit_host_batches", impl="gpunet", backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=Size("medium", (rows, WIDTHS[0])),
             dtype="float32", flops=mlp_step_flops(WIDTHS, rows), bound="compute", source=source)
    measure(fit_host, sync=sync, partners=[("in-device", fit_device, sync)])
