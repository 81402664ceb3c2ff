"""The benchmark suite's fixtures (BENCHMARKING.md is the method).

Not part of the unit tests: the README's ``python -m pytest -q`` collects only ``tests/``;
this directory runs when named (``python -m pytest benchmarks``) or through ``gpunet bench``.

- ``backend``: NumPy always, CuPy too when a GPU works (absent, not failing, without one).
- ``measure(fn, sync=..., setup=..., partners=...)``: times ``fn`` with pytest-benchmark.
  The caller has already run ``fn`` once and checked its result, so kernel compilation,
  cuBLAS handles and torch.compile are warm. ``sync`` runs inside the timed part (GPU calls
  return before the work is done); ``setup`` (untimed, synchronised) restores inputs an
  in-place op overwrote; ``partners`` alternate with ``fn`` round by round. On a GPU the
  host time to queue one call goes to ``extra_info["host_time"]``.
- ``--gpunet-backend``, ``--gpunet-size``, ``--gpunet-quick``, ``--gpunet-threads``: the
  options of ``gpunet bench``.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
import pytest

import gpunet as gn
from gpunet.backend import gpu_status

sys.path.insert(0, os.path.dirname(__file__))   # benchsupport, also under --import-mode=importlib
from benchsupport import TIERS, MLPSize, Size, no_sync, torch_or_none  # noqa: E402

GPU_OK, GPU_WHY = gpu_status()
# other work on a shared machine skews every figure: the JSON says how busy it was
_LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
BACKENDS = ["numpy"] + (["cupy"] if GPU_OK else [])

_QUICK_MAX_ROUNDS = 200
_FULL_MAX_ROUNDS = 2000


def pytest_addoption(parser):
    group = parser.getgroup("gpunet", "gpunet benchmark filters")
    group.addoption("--gpunet-backend", default="all", choices=["numpy", "cupy", "all"],
                    help="run the cases of one backend only (the PyTorch peer follows its device)")
    group.addoption("--gpunet-size", action="append", choices=list(TIERS), default=None,
                    help="run only these size tiers (repeatable); ceilings always run")
    group.addoption("--gpunet-quick", action="store_true",
                    help="small and medium sizes only, fewer rounds")
    group.addoption("--gpunet-threads", type=int, default=None,
                    help="CPU threads for BLAS/OpenMP and torch (default: the libraries' own)")


def pytest_configure(config):
    threads = config.getoption("gpunet_threads", None)
    if threads:
        # the same thread count for NumPy's BLAS and for the PyTorch peer
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise pytest.UsageError("--gpunet-threads needs threadpoolctl (pip install threadpoolctl)") from None
        config._gpunet_thread_limits = threadpool_limits(threads)
        torch = torch_or_none()
        if torch is not None:
            torch.set_num_threads(threads)


def pytest_report_header(config):
    torch = torch_or_none()
    peer = f"torch {torch.__version__}" if torch is not None else "torch not importable (peer skipped)"
    gpu = "GPU usable" if GPU_OK else f"no GPU ({GPU_WHY})"
    return f"gpunet benchmarks: backends {', '.join(BACKENDS)}; {gpu}; {peer}"


def _tiers(config):
    chosen = config.getoption("gpunet_size")
    tiers = set(chosen or TIERS)
    # --gpunet-quick, and a smoke run (--benchmark-disable: every case once, to keep the
    # suite from rotting) unless sizes were named, stay at small and medium: the code
    # paths are the same, the large inputs only take long to build and check
    if config.getoption("gpunet_quick") or (config.getoption("benchmark_disable") and not chosen):
        tiers -= {"large"}
    return tiers


def pytest_collection_modifyitems(config, items):
    """Apply the backend and size filters, and drop GPU-only sizes on NumPy."""
    want_backend = config.getoption("gpunet_backend")
    tiers = _tiers(config)
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend")
        sizes = [v for v in params.values() if isinstance(v, (Size, MLPSize))]
        ok = want_backend == "all" or backend is None or backend == want_backend
        for size in sizes:
            if size.tier not in tiers or (size.gpu_only and backend == "numpy"):
                ok = False
        (kept if ok else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    # the second measurement of each ceiling closes the run (test_bench_ceilings.py)
    last = [i for i in kept if getattr(getattr(i, "callspec", None), "params", {}).get("moment") == "end"]
    items[:] = [i for i in kept if i not in last] + last


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The gpunet backend under test, active for the test (models are built on it)."""
    with gn.use_backend(request.param) as be:
        yield be


@pytest.fixture
def measure(benchmark, request):
    """``measure(fn, sync=..., setup=None, partners=())`` times ``fn``; returns its last result."""
    config = request.config
    quick = config.getoption("gpunet_quick")
    max_time = float(config.getoption("benchmark_max_time"))
    min_rounds = int(config.getoption("benchmark_min_rounds"))
    max_rounds = _QUICK_MAX_ROUNDS if quick else _FULL_MAX_ROUNDS

    def run(fn, *, sync, setup=None, partners=(), least_rounds=None):
        """``partners``: (name, fn, sync) triples, each timed in the untimed slot before every
        round of ``fn``, so ``fn`` and its peers alternate A B A B on the same machine state;
        the median of the per-round ratios goes to ``extra_info["paired"]``. ``least_rounds``
        raises the minimum (a ceiling is a fastest round: it needs many to find one)."""
        own_times = []   # this side of the pairing, timed like the partners (no pytest-benchmark internals)

        def timed():
            t0 = time.perf_counter()
            result = fn()
            sync()
            own_times.append(time.perf_counter() - t0)
            return result

        partner_times = {name: [] for name, _, _ in partners}

        def prepare():
            for name, partner, partner_sync in partners:
                t0 = time.perf_counter()
                partner()
                partner_sync()
                partner_times[name].append(time.perf_counter() - t0)
            if setup is not None:
                setup()
            sync()

        if setup is None and not partners:
            prepare = None
        if benchmark.disabled:          # --benchmark-disable: the smoke run, once
            return benchmark.pedantic(timed, setup=prepare, rounds=1, iterations=1)
        # Rounds from a short estimate, so that every implementation gets about max_time.
        # One round is one call (rounds with a setup cannot loop), the same for a fused op
        # and its unfused composition, so their ratio compares like with like.
        samples = []
        while len(samples) < 3:
            t0 = time.perf_counter()
            if prepare is not None:
                prepare()
            timed()
            samples.append(time.perf_counter() - t0)
            if samples[-1] > max_time / 4:
                break
        estimate = max(statistics.median(samples), 1e-7)
        rounds = int(min(max((1 + len(partners)) * max_time / estimate, min_rounds, least_rounds or 0),
                         max_rounds))
        own_times.clear()
        for times in partner_times.values():
            times.clear()
        result = benchmark.pedantic(timed, setup=prepare, rounds=rounds, iterations=1)
        if partners:
            # before the host-time rounds below, whose prepare() also times the partners
            own = own_times
            benchmark.extra_info["paired"] = {
                name: {"median": statistics.median(times), "rounds": len(times),
                       "ratio": statistics.median(a / b for a, b in zip(own, times, strict=True))}
                for name, times in partner_times.items()}
        if sync is not no_sync:
            # GPU: how long the host takes to queue one call. Near the device time, the
            # host (Python, launches) is the bottleneck of this case
            host = []
            for _ in range(min(rounds, 20)):
                if prepare is not None:
                    prepare()
                t0 = time.perf_counter()
                fn()
                host.append(time.perf_counter() - t0)
                sync()
            benchmark.extra_info["host_time"] = statistics.median(host)
        return result

    return run


# ---- what the JSON records about the machine ------------------------------------------
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gpunet"] = machine_facts()


def machine_facts() -> dict:
    """Library versions, CPU model, BLAS and threads, GPU and driver: what a figure depends on."""
    facts = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gpunet": gn.__version__,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu_usable": GPU_OK,
        "gpu_status": GPU_WHY,
        "loadavg": _LOAD_AT_START,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        facts["blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info
        facts["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                                     "filepath")}
                                for p in threadpool_info()]
    except Exception:
        pass
    torch = torch_or_none()
    if torch is not None:
        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        facts["torch_cuda"] = bool(torch.cuda.is_available())
    if GPU_OK:
        import cupy
        facts["cupy"] = cupy.__version__
        try:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            facts["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            facts["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
            facts["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            facts["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        except Exception as exc:  # a partial CUDA install still benchmarks; say what is unknown
            facts["gpu"] = f"unknown ({type(exc).__name__})"
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
