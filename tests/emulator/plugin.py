"""pytest plugin: the GPU tests on a machine without a GPU, with the real kernels on the host.

    PYTHONPATH=tests python -m pytest -q -p emulator.plugin -m gpu tests

It installs a NumPy-backed stand-in for ``cupy`` before gpunet imports it and sends every
kernel launch of ``gpunet.cuda.launch`` to ``host_kernels`` (kernels/*.cu compiled with g++ against
cuda_host.h). ``CupyBackend``, the launchers and the kernels then run as they would on a GPU,
but for cuBLAS (NumPy's matmul) and CuPy itself. Device arrays are a NumPy subclass, so
``isinstance(x, cupy.ndarray)`` tells them from host arrays and a ufunc mixing the two is
refused as CuPy refuses it. The element-wise kernels' grid caps are lowered so that small
tests wrap the grid-stride loops. Tests that need CuPy itself (its memory pool, a GPU in a
subprocess) carry the ``real_cupy`` marker and are skipped here. ``cupyx.allow_synchronize``
is there too: with it off, reading a device value on the host raises, as on a GPU; and
``launch_counts()`` tells how many kernels a piece of code launches. Device buffers made by
``empty``, ``zeros``, ``full`` and ``asarray`` have guard bytes on either side (signalling NaNs in float buffers),
checked after every launch that was handed them, and ``empty`` floats start as NaN (stale memory).

What it cannot show: speed, races between blocks (blocks run one after another), the
device's math library and contraction, and anything about CuPy, cuBLAS or the driver.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import tempfile
import threading
import types
import weakref
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_kernels  # noqa: E402


# ---- the cupy stand-in ----------------------------------------------------------------------
ARRAY_OPS: collections.Counter = collections.Counter()   # CuPy-level operations, by name


def launch_counts() -> collections.Counter:
    """Launches so far, by name: gpunet's kernels, and the CuPy operations (ufuncs, matmul,
    filling constructors) that are one kernel each on a GPU. Host-to-device copies are not
    counted."""
    counts = collections.Counter({name: k.launches for name, k in KERNELS.items() if k.launches})
    counts.update(ARRAY_OPS)
    return counts


_SYNC = {"allowed": True}


@contextlib.contextmanager
def allow_synchronize(allow):
    """cupyx.allow_synchronize: with False, reading a device value on the host raises."""
    before, _SYNC["allowed"] = _SYNC["allowed"], bool(allow)
    try:
        yield
    finally:
        _SYNC["allowed"] = before


def _host_read(what):
    _refused_in_capture(f"{what} (a host read)")
    if not _SYNC["allowed"]:
        raise RuntimeError(f"synchronization disallowed: {what} reads a device value on the host")


class DeviceArray(np.ndarray):
    """A NumPy array standing for a ``cupy.ndarray`` in device memory; the ways CuPy reads
    one back to the host (``get``, ``item``, ``float()``...) count as synchronisations."""

    def get(self):
        _host_read("get()")
        return np.array(self, copy=True)

    def set(self, arr, stream=None):   # cupy: a host-to-device copy into this array (async on ``stream``)
        _refused_in_capture("set() (a host-to-device copy)")
        if stream is not None and not isinstance(arr, PinnedHostArray):
            raise RuntimeError("an asynchronous copy from pageable host memory: CUDA runs it synchronously "
                               "(allocate the host buffer with cupyx.empty_pinned)")
        _order("copy", (stream or _get_current_stream()).ptr, self.__array_interface__["data"][0])
        self.view(np.ndarray)[...] = arr


    @property
    def data(self):   # cupy: a MemoryPointer whose .ptr is the device address
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for x in inputs + (out or ()):
            if type(x) is np.ndarray and x.ndim > 0:
                raise TypeError(f"{ufunc.__name__}: a host numpy.ndarray mixed with device arrays "
                                "(CuPy refuses this)")
        _refused_in_capture(f"the CuPy operation {ufunc.__name__}" + (
            " (cuBLAS: CuPy refuses it during stream capture)" if ufunc is np.matmul else ""))
        ARRAY_OPS[ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"] += 1
        plain = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, DeviceArray) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _on_device(result)   # reductions give 0-d device arrays, as in CuPy


class PinnedHostArray(np.ndarray):
    """A host array in page-locked memory (``cupyx.empty_pinned``): what an asynchronous
    host-to-device copy needs."""


def _empty_pinned(shape, dtype=np.float64, order="C"):
    return np.empty(shape, dtype=dtype, order=order).view(PinnedHostArray)


# The order of what is queued on which stream, when a test turns it on: ("launch", stream,
# kernel), ("copy", stream, device address), ("record", stream, event), ("wait", stream,
# event) and ("event_sync", None, event), with events named by id.
ORDER_LOG: list = []
_ORDER = {"on": False}


@contextlib.contextmanager
def ordering_log():
    """``with ordering_log() as log:`` records the queue order in ``log`` (a list)."""
    ORDER_LOG.clear()
    _ORDER["on"] = True
    try:
        yield ORDER_LOG
    finally:
        _ORDER["on"] = False


def _order(what, stream_ptr, detail):
    if _ORDER["on"]:
        ORDER_LOG.append((what, stream_ptr, detail))

_HOOKS: list = []


class MemoryHook:
    """cupy.cuda.MemoryHook: while entered, ``malloc_postprocess(size=...)`` hears of every
    new device array (from a cupy function, a host copy or a ufunc without ``out``)."""

    name = "hook"

    def __enter__(self):
        _HOOKS.append(self)
        return self

    def __exit__(self, *exc):
        _HOOKS.remove(self)

    def malloc_postprocess(self, **kwargs):
        pass


def _allocated(arr):
    for hook in _HOOKS:
        hook.malloc_postprocess(device_id=0, size=arr.nbytes, mem_size=arr.nbytes, mem_ptr=0, pmem_id=0)
    return arr


def _reading_on_the_host(name):
    method = getattr(np.ndarray, name)

    def read(self, *args):
        _host_read(f"{name}()")
        return method(self, *args)
    return read


for _name in ("item", "tolist", "__float__", "__int__", "__bool__"):
    setattr(DeviceArray, _name, _reading_on_the_host(_name))


def _on_device(result):
    if type(result) is np.ndarray:
        return _allocated(result.view(DeviceArray))
    if isinstance(result, np.generic):
        return _allocated(np.asarray(result).view(DeviceArray))
    if isinstance(result, tuple):
        return tuple(_on_device(r) for r in result)
    return result


def _device_function(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        if isinstance(result, np.ndarray) and not fn.__name__.startswith("empty"):
            ARRAY_OPS[fn.__name__] += 1     # e.g. zeros, full, where: a kernel on a GPU
        return _on_device(result)
    return wrapper


# ---- device memory: guard bytes around each buffer, uninitialised memory poisoned ---------
_GUARD = 64                       # bytes each side (keeps 64-byte alignment)
# Signalling NaNs for float buffers: a read past the end turns into a NaN in the results,
# and no arithmetic writes these bytes back (it would quiet the NaN); other dtypes get 0xA5.
_GUARD_WORDS = {np.dtype(np.float32): np.array(0x7FA5A5A5, np.uint32),
                np.dtype(np.float64): np.array(0x7FF4A5A5A5A5A5A5, np.uint64)}
_GUARDED = weakref.WeakValueDictionary()   # id -> the raw byte buffers behind device arrays
_GUARD_PATTERN: dict = {}                  # id -> the guard bytes that buffer was given


def _guard_bytes(dtype) -> np.ndarray:
    word = _GUARD_WORDS.get(np.dtype(dtype))
    if word is None:
        return np.full(_GUARD, 0xA5, dtype=np.uint8)
    return np.tile(word.reshape(1).view(np.uint8), _GUARD // word.itemsize)


def _device_empty(shape, dtype=np.float64, poison=True):
    """A C-contiguous device array inside a byte buffer with guard bytes on either side.
    Floating-point contents start as NaN, as stale memory can hold anything."""
    _refused_in_capture("an allocation")
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 2 * _GUARD, dtype=np.uint8)
    guard = _guard_bytes(dtype)
    raw[:_GUARD] = raw[len(raw) - _GUARD:] = guard
    body = raw[_GUARD:_GUARD + nbytes]
    if poison and dtype.kind in "fc":
        body[...] = 0xFF
    _GUARDED[id(raw)] = raw
    _GUARD_PATTERN[id(raw)] = guard
    weakref.finalize(raw, _GUARD_PATTERN.pop, id(raw), None)
    return _allocated(body.view(dtype).reshape(shape).view(DeviceArray))


def _guards_intact(arr) -> bool:
    """False when a kernel wrote past either end of the buffer behind ``arr``."""
    base = arr
    while base is not None and _GUARDED.get(id(base)) is not base:
        base = getattr(base, "base", None)    # an unpickled array ends in bytes: not a guarded buffer
    if base is None:
        return True
    guard = _GUARD_PATTERN[id(base)]
    return bool((base[:_GUARD] == guard).all() and (base[len(base) - _GUARD:] == guard).all())


def _check_guards(kernel, args):
    for i, arg in enumerate(args):
        if isinstance(arg, np.ndarray) and not _guards_intact(arg):
            raise RuntimeError(f"{kernel.name}: a write past the end of the buffer of argument {i}")


def _empty(shape, dtype=np.float64, order="C"):
    return _device_empty(shape, dtype)


def _empty_like(a, dtype=None, order="K", subok=True, shape=None):
    return _device_empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def _zeros(shape, dtype=np.float64, order="C"):
    ARRAY_OPS["zeros"] += 1
    arr = _device_empty(shape, dtype, poison=False)
    arr.view(np.ndarray)[...] = 0
    return arr


def _full(shape, fill_value, dtype=None, order="C"):
    ARRAY_OPS["full"] += 1
    dtype = np.asarray(fill_value).dtype if dtype is None else dtype
    arr = _device_empty(shape, dtype, poison=False)
    arr.view(np.ndarray)[...] = fill_value
    return arr


def _asarray(a, dtype=None, order=None):
    if isinstance(a, DeviceArray):
        return _on_device(np.asarray(a, dtype=dtype, order=order))
    host = np.asarray(a, dtype=dtype)
    arr = _device_empty(host.shape, host.dtype, poison=False)     # a host-to-device copy
    arr.view(np.ndarray)[...] = host
    return arr


def _asnumpy(a):
    if isinstance(a, DeviceArray):
        _host_read("asnumpy()")
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else np.asarray(a)


def _module_getattr(name):
    attr = getattr(np, name)   # AttributeError for what NumPy lacks (e.g. the memory pool)
    if callable(attr) and not isinstance(attr, (type, np.ufunc)):
        return _device_function(attr)
    return attr


# Streams and events: every launch runs to completion when it is made, so ordering costs
# nothing here; the stand-ins keep CuPy's interface (current stream per thread, ``with
# stream:``, the null and per-thread default streams) and log the cross-stream orderings in
# STREAM_LOG as ("record", stream ptr) and ("wait", stream ptr), for the tests to read.
STREAM_LOG: list = []
_current_stream = threading.local()


class _Stream:
    null = ptds = None      # set below

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else 2 if ptds else id(self)
        self._captured = None

    def synchronize(self):
        _refused_in_capture("a stream synchronisation")

    # Stream capture, as CUDA graphs make it: while a stream captures, gpunet's launches on it
    # are recorded, not run; ``end_capture`` gives a graph whose ``launch`` runs them again in
    # order (one "graph_launch" in launch_counts). What a captured step must not hold (a CuPy
    # operation, cuBLAS, an allocation, a host read) raises here, so the tests see it.
    def begin_capture(self, mode=None):
        if self.ptr in (0, 2):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self._captured is not None:
            raise RuntimeError("the stream is already capturing")
        self._captured = []

    def end_capture(self):
        if self._captured is None:
            raise RuntimeError("the stream is not capturing")
        graph, self._captured = _Graph(self._captured), None
        return graph

    def is_capturing(self):
        return self._captured is not None

    def wait_event(self, event):
        STREAM_LOG.append(("wait", self.ptr))
        _order("wait", self.ptr, id(event))

    def __enter__(self):
        stack = _current_stream.__dict__.setdefault("stack", [])
        stack.append(self)
        return self

    def __exit__(self, *exc):
        _current_stream.stack.pop()


_Stream.null, _Stream.ptds = _Stream(null=True), _Stream(ptds=True)


def _get_current_stream():
    stack = getattr(_current_stream, "stack", None)
    return stack[-1] if stack else _Stream.null


def _capturing_stream():
    stream = _get_current_stream()
    return stream if stream._captured is not None else None


def _refused_in_capture(what):
    if _capturing_stream() is not None:
        raise RuntimeError(f"{what} during stream capture: a captured training step holds only gpunet's kernels")


def _record_launch(kernel, grid, block, args, shared_mem):
    """HostKernel.recorder: a launch on a capturing stream goes into its graph."""
    stream = _capturing_stream()
    if stream is None:
        _order("launch", _get_current_stream().ptr, kernel.name)
        return False
    stream._captured.append((kernel, grid, block, tuple(args), shared_mem))
    return True


class _Graph:
    """cupy.cuda.graph.Graph: the launches a capture recorded, run again by ``launch``."""

    def __init__(self, launches):
        self.launches = launches

    def launch(self, stream=None):
        _refused_in_capture("a graph launch")
        ARRAY_OPS["graph_launch"] += 1
        for kernel, grid, block, args, shared_mem in self.launches:
            kernel.replay(grid, block, args, shared_mem)


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        pass

    def record(self, stream=None):
        ptr = (stream or _get_current_stream()).ptr
        STREAM_LOG.append(("record", ptr))
        _order("record", ptr, id(self))

    def synchronize(self):
        _refused_in_capture("an event synchronisation")
        _order("event_sync", None, id(self))

    @property
    def done(self):        # every launch has run when it was made
        return True


class _Device:
    id = 0
    compute_capability = "90"

    def __init__(self, device=None):
        pass

    def use(self):
        pass

    def synchronize(self):
        pass


def _make_cupy():
    cp = types.ModuleType("cupy")
    cp.__version__ = "0.0+host-emulator"
    cp.__getattr__ = _module_getattr
    cp.ndarray = DeviceArray
    cp.asarray = _asarray
    cp.empty, cp.empty_like, cp.zeros, cp.full = _empty, _empty_like, _zeros, _full
    cp.array = lambda a, dtype=None, copy=True: np.array(a, dtype=dtype, copy=True).view(DeviceArray)
    cp.asnumpy = _asnumpy
    cuda_mod = types.ModuleType("cupy.cuda")
    cuda_mod.runtime = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: 13000,
        # an H100's limits: 227 KiB of opt-in shared memory keeps a float32 row of 32768
        # logits in shared memory and sends a float64 one down the second-read path
        getDeviceProperties=lambda dev: {"name": b"host emulator", "sharedMemPerBlockOptin": 232448,
                                         "sharedMemPerBlock": 49152, "multiProcessorCount": 132,
                                         "totalGlobalMem": 80 * 2**30})
    cuda_mod.Device = _Device
    cuda_mod.get_current_stream = _get_current_stream
    cuda_mod.Stream, cuda_mod.Event = _Stream, _Event
    cuda_mod.MemoryHook = MemoryHook
    cp.cuda = cuda_mod
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    # CuPy 14's values; float32 starts at DEFAULT (CUPY_TF32 unset), so gpunet sets and restores
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_FP32, linalg.COMPUTE_TYPE_TF32 = 1, 4, 7
    _compute = {}
    linalg.get_compute_type = lambda dtype: _compute.get(np.dtype(dtype), linalg.COMPUTE_TYPE_DEFAULT)
    linalg.set_compute_type = lambda dtype, kind: _compute.__setitem__(np.dtype(dtype), kind)
    core._routines_linalg = linalg
    cp._core = core
    cupyx = types.ModuleType("cupyx")
    cupyx.allow_synchronize = allow_synchronize
    cupyx.empty_pinned = _empty_pinned
    return {"cupy": cp, "cupy.cuda": cuda_mod, "cupy._core": core, "cupy._core._routines_linalg": linalg,
            "cupyx": cupyx}


# installed at import (``-p emulator.plugin`` imports this before any test module or gpunet)
sys.modules.update(_make_cupy())
KERNELS: dict = {}


def _emulated_kernel(topic, name):
    if name not in KERNELS:
        raise KeyError(f"no kernel {name} in kernels/{topic}.cu")
    return KERNELS[name]


def activate(small_grids=True):
    """Build the kernels for the host and send gpunet's launches to them (the stand-in for
    ``cupy`` is in place from this module's import on). ``small_grids`` lowers the grid caps
    so that a few thousand elements wrap every grid-stride loop (the tests); a run of a whole
    command (``run.py``) keeps the real caps."""
    cache = Path(os.environ.get("GPUNET_EMULATOR_CACHE", Path(tempfile.gettempdir()) / "gpunet-host-kernels"))
    KERNELS.update(host_kernels.build(cache))
    from gpunet.cuda import layout, sources
    sources.get_kernel = _emulated_kernel
    host_kernels.HostKernel.after_launch = staticmethod(_check_guards)
    host_kernels.HostKernel.recorder = staticmethod(_record_launch)
    if small_grids:
        layout.MAX_GRID_1D = 3
        layout.MAX_GRID_ROWS = 3
        layout.MAX_REDUCTION_BLOCKS = 5


# ---- pytest hooks ---------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", "real_cupy: needs CuPy itself, not only the kernels (skipped under the emulator)")
    activate()


def pytest_report_header(config):
    return f"gpunet kernels on the host emulator: {len(KERNELS)} kernels built with {host_kernels.compiler()}"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs CuPy itself, not only the kernels (run it on a GPU)")
    for item in items:
        if "real_cupy" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    # a run in which no kernel ran proves nothing (e.g. every GPU test skipped)
    if exitstatus == 0 and not any(k.launches for k in KERNELS.values()):
        print("\nemulator: no kernel was launched", file=sys.stderr)
        session.exitstatus = 1
