"""Shared fixtures: every test that takes ``backend`` runs on NumPy, and on CuPy too when a
GPU works (tests marked ``gpu`` are skipped cleanly without one)."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from gpunet.backend import gpu_status

GPU_OK, GPU_WHY = gpu_status()
BACKENDS = ["numpy"] + (["cupy"] if GPU_OK else [])
DTYPES = ["float32", "float64"]
# every element-wise activation the kernels implement, parameters off their defaults too
ELEMENTWISE_ACTIVATIONS = {
    "identity": gn.Identity(),
    "sigmoid": gn.Sigmoid(),
    "scaled_sigmoid": gn.Sigmoid(c=1.7, beta=0.6),
    "tanh": gn.Tanh(),
    "relu": gn.ReLU(),
    "leaky_relu": gn.LeakyReLU(),
    "leaky_relu_0.3": gn.LeakyReLU(0.3),
    "exp": gn.Exp(),
}


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"no usable GPU: {GPU_WHY}")
    for item in items:
        if "gpu" in item.keywords and not GPU_OK:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend under test, made active for the duration of the test."""
    with gn.use_backend(request.param) as be:
        yield be


@pytest.fixture(scope="session")
def gpu():
    """A CuPy backend with exact float32 GEMMs, for the kernel-against-twin tests (gpu only)."""
    from gpunet.cupy_backend import CupyBackend
    return CupyBackend(allow_tf32=False)


@pytest.fixture(scope="session")
def ref():
    """The NumPy reference backend those tests compare against."""
    from gpunet.backend import NumpyBackend
    return NumpyBackend()


@pytest.fixture(scope="session")
def allocation_log():
    """``with allocation_log() as log:`` records in ``log.sizes`` the size of every block
    CuPy's memory pool hands out meanwhile (gpu tests)."""
    import cupy

    class AllocationLog(cupy.cuda.MemoryHook):
        name = "gpunet_allocation_log"

        def __init__(self):
            self.sizes = []

        def malloc_postprocess(self, **kwargs):
            self.sizes.append(kwargs.get("size", kwargs.get("mem_size", 0)))

    return AllocationLog


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype) -> dict:
    """rtol/atol for comparing a result in ``dtype`` with a float64 reference."""
    return {"rtol": 2e-5, "atol": 1e-6} if np.dtype(dtype) == np.float32 else {"rtol": 1e-11, "atol": 1e-13}
