"""The fused CUDA kernels of ``kernels/*.cu``: finding, compiling and launching them.

Each topic file (``activations.cu``, ``softmax_xent.cu``, ...) is compiled once per process
through ``cupy.RawModule`` the first time one of its kernels is launched; CuPy's on-disk
kernel cache (``~/.cupy/kernel_cache``) spares later processes the NVRTC run. The kernels
are ``extern "C"`` entry points named ``<kernel>_f32`` / ``<kernel>_f64``.

There is one thin launcher per kernel below. A launcher checks dtypes, shapes and
C-contiguity (raising ``TypeError``/``ValueError``: the backend decides about fallbacks
before calling), casts every scalar to the C type of the kernel's parameter, picks the
float or double instance, computes the launch layout and launches on the current stream.
None of them reads anything back from the device.

``compile_sources`` compiles every source without a GPU (NVRTC through
``cupy.cuda.nvrtc``, or ``nvcc -ptx``), for ``gpunet info`` and the tests.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "KERNEL_TOPICS", "PRELUDE", "kernel_dir", "module_source", "kernel_sources", "kernel_names", "get_kernel", "compile_sources",
    "bias_act", "act_backward", "softmax_xent", "softmax", "mse_grad", "column_sums", "sumsq",
    "sgd_update", "adam_update", "rmsprop_update", "grid_1d", "column_sums_chunks", "reduction_grid", "row_layout", "RowLayout",
    "LONG_ROW_VARIANTS", "long_row_variant", "long_rows",
]

KERNEL_TOPICS = ("activations", "softmax_xent", "mse", "reduce", "optim")
PRELUDE = "common.cuh"      # device helpers put in front of every topic (see module_source)

# NVRTC 12/13 defaults to C++17, which the sources need at most; no options are required.
_NVRTC_OPTIONS: tuple[str, ...] = ()

BLOCK = 256                 # threads per block of the 1-D kernels (the reductions need exactly 256)
MAX_GRID_1D = 4096          # blocks of an element-wise kernel; its grid-stride loop covers the rest
MAX_GRID_ROWS = 4096        # blocks of a row kernel (softmax); likewise grid-strides over rows
MAX_REDUCTION_BLOCKS = 1024  # partial sums of sumsq / mse, summed by one block afterwards
WARP_ROW_MAX_COLS = 1024    # rows up to this width get one warp each, longer ones one block
_ELEMENTWISE_KINDS = (0, 1, 2, 3, 4)   # activation ids the kernels implement (activations.py)


# ---- sources ------------------------------------------------------------------------------
def kernel_dir() -> Path:
    """The folder holding the ``.cu`` sources.

    In a source checkout (e.g. run with ``PYTHONPATH=$PWD``, or an editable install) that is
    ``<repo>/kernels``; in an installed wheel it is the ``gpunet.kernels`` package data.
    """
    checkout = Path(__file__).resolve().parent.parent / "kernels"
    if checkout.is_dir() and any(checkout.glob("*.cu")):
        return checkout
    # the wheel puts them beside this module; gpunet.kernels has no __init__.py, and for such a
    # namespace package importlib.resources.files() gives a MultiplexedPath, not a folder
    path = Path(__file__).resolve().parent / "kernels"
    if path.is_dir() and any(path.glob("*.cu")):
        return path
    try:  # the package data wherever else gpunet.kernels is importable from
        import importlib.resources
        for entry in importlib.resources.files("gpunet.kernels").iterdir():
            if entry.name.endswith(".cu") and Path(str(entry)).is_file():
                return Path(str(entry)).parent
    except (ImportError, TypeError, ValueError, OSError):
        pass
    raise FileNotFoundError(f"gpunet's CUDA sources are missing: no .cu file in {checkout} or {path}")


def kernel_sources() -> dict[str, Path]:
    """``{topic: path}`` of every ``.cu`` source, sorted by topic."""
    folder = kernel_dir()
    return {p.stem: p for p in sorted(folder.glob("*.cu"))}


def module_source(path: Path) -> str:
    """The text compiled for one topic: the shared device helpers of ``kernels/common.cuh``,
    then the topic's own source, with a ``#line`` so compiler messages point into it."""
    prelude = (kernel_dir() / PRELUDE).read_text(encoding="utf-8")
    return f'{prelude}\n#line 1 "{path.name}"\n{path.read_text(encoding="utf-8")}'


def _source(topic: str) -> str:
    sources = kernel_sources()
    if topic not in sources:
        raise FileNotFoundError(f"no kernels/{topic}.cu among {sorted(sources)}")
    return module_source(sources[topic])


_ENTRY_POINT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?(\w+)\s*\(')


def kernel_names(source: str) -> list[str]:
    """Names of the ``extern "C" __global__`` entry points declared in a source text."""
    return _ENTRY_POINT.findall(source)


# ---- loading (lazily, once per process and device) ----------------------------------------
_modules: dict = {}
_functions: dict = {}


def _module(topic: str):
    import cupy
    key = (topic, cupy.cuda.runtime.getDevice())
    mod = _modules.get(key)
    if mod is None:
        mod = cupy.RawModule(code=_source(topic), options=_NVRTC_OPTIONS)
        _modules[key] = mod
    return mod


def get_kernel(topic: str, name: str):
    """The ``cupy.RawKernel`` ``name`` of ``kernels/<topic>.cu`` (compiled on first use)."""
    import cupy
    key = (topic, name, cupy.cuda.runtime.getDevice())
    fn = _functions.get(key)
    if fn is None:
        fn = _module(topic).get_function(name)
        _functions[key] = fn
    return fn


def load_all() -> dict[str, list[str]]:
    """Compile and load every topic on the current device; ``{topic: kernel names}``."""
    loaded = {}
    for topic, path in kernel_sources().items():
        names = kernel_names(path.read_text(encoding="utf-8"))
        for name in names:
            get_kernel(topic, name)
        loaded[topic] = names
    return loaded


# ---- compile without a GPU ----------------------------------------------------------------
def _nvrtc_compile(source: str, filename: str, arch: str) -> str | None:
    """Compile with NVRTC to PTX for ``arch`` ("sm_90" -> compute_90); None on success, else the log."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture=compute_{arch.removeprefix('sm_')}",
                                        *_NVRTC_OPTIONS])
        except nvrtc.NVRTCError as exc:
            return f"{exc}\n{nvrtc.getProgramLog(prog)}"
        nvrtc.getPTX(prog)
        return None
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_version() -> tuple[int, int] | None:
    """NVRTC's version when ``cupy.cuda.nvrtc`` can load libnvrtc, else None (no GPU needed)."""
    try:
        from cupy.cuda import nvrtc
        return tuple(nvrtc.getVersion())
    except Exception:
        return None


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def _nvcc_compile(path: Path, arch: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        # the same text RawModule compiles (prelude + topic), so nvcc checks what will run
        full = Path(tmp) / path.name
        full.write_text(module_source(path), encoding="utf-8")
        cmd = [nvcc_path() or "nvcc", "-ptx", f"-arch={arch}", str(full), "-o", os.path.join(tmp, "out.ptx")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return None


def compile_sources(compiler: str = "auto", archs=("sm_80", "sm_90")) -> list[tuple[str, str, str, str | None]]:
    """Compile every ``kernels/*.cu`` for each architecture, launching nothing.

    ``compiler``: "nvrtc" (``cupy.cuda.nvrtc``; needs libnvrtc, not a GPU), "nvcc"
    (``nvcc -ptx``) or "auto" (NVRTC when it loads, else nvcc). Returns
    ``[(topic, compiler, arch, error_or_None)]``; raises RuntimeError when no compiler is there.
    """
    if compiler == "auto":
        compiler = "nvrtc" if nvrtc_version() is not None else ("nvcc" if nvcc_path() else None)
        if compiler is None:
            raise RuntimeError("neither NVRTC (through CuPy) nor nvcc is available")
    if compiler == "nvrtc" and nvrtc_version() is None:
        raise RuntimeError("NVRTC is not available (CuPy missing, or libnvrtc not found)")
    if compiler == "nvcc" and nvcc_path() is None:
        raise RuntimeError("nvcc is not on PATH")
    if compiler not in ("nvrtc", "nvcc"):
        raise ValueError(f"unknown compiler {compiler!r}; choose 'auto', 'nvrtc' or 'nvcc'")
    jobs = [(topic, path, arch) for topic, path in kernel_sources().items() for arch in archs]
    if compiler == "nvrtc":
        errors = [_nvrtc_compile(module_source(path), path.name, arch) for _, path, arch in jobs]
    else:  # separate processes: run them side by side
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            errors = list(pool.map(lambda job: _nvcc_compile(job[1], job[2]), jobs))
    return [(topic, compiler, arch, err) for (topic, _, arch), err in zip(jobs, errors)]


# ---- launch helpers -----------------------------------------------------------------------
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _suffix(dtype) -> str:
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the CUDA kernels take float32 or float64, got {np.dtype(dtype)}") from None


def _check(name, arr, dtype=None, ndim=None):
    import cupy
    if not isinstance(arr, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(arr).__name__}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def grid_1d(size: int, cap: int | None = None) -> int:
    """Blocks of BLOCK threads for ``size`` elements, at most ``cap`` (default MAX_GRID_1D);
    the kernels' grid-stride loops do the rest."""
    return max(1, min(MAX_GRID_1D if cap is None else cap, -(-size // BLOCK)))


def reduction_grid(size: int) -> int:
    """Blocks of a two-pass reduction over ``size`` elements: a function of the size only, so
    the summation order, and the result, do not depend on the device."""
    return max(1, min(MAX_REDUCTION_BLOCKS, -(-size // (BLOCK * 8))))


def column_sums_chunks(rows: int, cols: int) -> tuple[int, int]:
    """(row chunks, rows per chunk) of ``column_sums``: enough blocks to fill a large GPU
    (about 512) when there are few 32-column tiles, and chunks of at least 64 rows.
    A function of the shape only (deterministic across devices)."""
    tiles = -(-cols // 32)
    chunks = max(1, min(-(-512 // tiles), -(-rows // 64), 65535))
    rows_per_chunk = -(-rows // chunks) if rows else 1
    chunks = -(-rows // rows_per_chunk) if rows else 1
    return chunks, rows_per_chunk


class RowLayout(NamedTuple):
    """How a row kernel of softmax_xent.cu is launched (see ``row_layout``)."""
    kernel: str        # "warp" (a warp per row), "block" or "block_regs" (a block per row)
    block: int         # threads per block
    grid: int          # blocks (capped; the kernels grid-stride over rows)
    mode: int          # warp, block_regs: register slots per thread; block: 1 = row in shared memory
    shared_mem: int    # dynamic shared memory bytes per block


LONG_ROW_VARIANTS = ("shared", "registers")
BLOCK_REGS_THREADS = 1024               # GN_BLOCK_REGS_THREADS in softmax_xent.cu
_BLOCK_REGS_SLOTS = (2, 4, 8, 16, 32)   # the instances of the *_block_regs kernels


_long_rows_override: list = []


def long_row_variant() -> str:
    """How rows longer than WARP_ROW_MAX_COLS are kept between their two passes: "shared"
    (shared memory, else a second read; the default) or "registers" (the *_block_regs
    kernels, up to 32768 float32 / 16384 float64 columns). ``GPUNET_LONG_ROWS`` picks (or,
    inside it, ``long_rows``); the benchmark suite times both on the long-row cases."""
    if _long_rows_override:
        return _long_rows_override[-1]
    variant = os.environ.get("GPUNET_LONG_ROWS", "shared").strip().lower()
    if variant not in LONG_ROW_VARIANTS:
        raise ValueError(f"GPUNET_LONG_ROWS must be one of {', '.join(LONG_ROW_VARIANTS)}, got {variant!r}")
    return variant


@contextlib.contextmanager
def long_rows(variant: str):
    """Within the block, rows over WARP_ROW_MAX_COLS columns take ``variant`` ("shared" or
    "registers"), whatever ``GPUNET_LONG_ROWS`` says."""
    if variant not in LONG_ROW_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LONG_ROW_VARIANTS)}, got {variant!r}")
    _long_rows_override.append(variant)
    try:
        yield
    finally:
        _long_rows_override.pop()


_smem_optin: dict = {}


def _max_dynamic_smem() -> int:
    """Bytes of dynamic shared memory a block may opt into on the current device (static
    shared memory of the row kernels, 512 bytes at most, kept aside)."""
    import cupy
    dev = cupy.cuda.runtime.getDevice()
    if dev not in _smem_optin:
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        _smem_optin[dev] = int(props.get("sharedMemPerBlockOptin", props.get("sharedMemPerBlock", 49152))) - 1024
    return _smem_optin[dev]


def row_layout(rows: int, cols: int, itemsize: int, max_smem: int | None = None,
               variant: str | None = None) -> RowLayout:
    """Launch layout of the row kernels for logits (rows, cols) of ``itemsize`` bytes.

    Rows up to WARP_ROW_MAX_COLS wide: one warp each, 8 per block, the row kept in 1, 4 or 32
    registers per lane. Longer rows: one block each. ``variant`` (``long_row_variant()`` by
    default) "registers": 1024 threads keeping the row in 2-32 registers each, where it fits;
    otherwise, and with "shared": 256/512/1024 threads as the row grows, the row kept in
    dynamic shared memory when it fits (``max_smem`` bytes, the device's opt-in limit by
    default), else read a second time (mostly from L2).
    """
    if cols <= WARP_ROW_MAX_COLS:
        slots = 1 if cols <= 32 else 4 if cols <= 128 else 32
        rows_per_block = BLOCK // 32
        return RowLayout("warp", BLOCK, max(1, min(MAX_GRID_ROWS, -(-rows // rows_per_block))), slots, 0)
    if (variant or long_row_variant()) == "registers":
        most = 32 if itemsize <= 4 else 16     # 32 doubles a thread would spill
        slots = next((s for s in _BLOCK_REGS_SLOTS if s <= most and s * BLOCK_REGS_THREADS >= cols), None)
        if slots is not None:
            return RowLayout("block_regs", BLOCK_REGS_THREADS, max(1, min(MAX_GRID_ROWS, rows)), slots, 0)
    block = 256 if cols <= 4096 else 512 if cols <= 16384 else 1024
    row_bytes = cols * itemsize
    if max_smem is None:
        max_smem = _max_dynamic_smem()
    keep = row_bytes <= max_smem
    return RowLayout("block", block, max(1, min(MAX_GRID_ROWS, rows)), int(keep), row_bytes if keep else 0)


_smem_granted: dict = {}


def _launch_rows(topic: str, name: str, layout: RowLayout, args):
    fn = get_kernel(topic, name)
    if layout.shared_mem > 48 * 1024:   # past the default limit a kernel must opt in
        import cupy
        key = (name, cupy.cuda.runtime.getDevice())
        if _smem_granted.get(key, 0) < layout.shared_mem:
            fn.max_dynamic_shared_size_bytes = layout.shared_mem
            _smem_granted[key] = layout.shared_mem
    fn((layout.grid,), (layout.block,), args, shared_mem=layout.shared_mem)


def _scalar(dtype, value):
    return np.dtype(dtype).type(value)


# ---- launchers ----------------------------------------------------------------------------
def bias_act(z, b, kind: int, p0: float = 0.0, p1: float = 0.0):
    """``z <- f(z + b)`` in place. z (N, n), b (n,), same float dtype; ``kind`` an activation id."""
    _check("z", z, ndim=2)
    _check("b", b, dtype=z.dtype, ndim=1)
    rows, cols = z.shape
    if b.shape[0] != cols:
        raise ValueError(f"bias has {b.shape[0]} entries for {cols} columns")
    if kind not in _ELEMENTWISE_KINDS:
        raise ValueError(f"no bias_act kernel for activation kind {kind}")
    if z.size == 0:
        return z
    fn = get_kernel("activations", f"bias_act_{_suffix(z.dtype)}")
    fn((grid_1d(z.size),), (BLOCK,), (z, b, np.int64(rows), np.int64(cols), np.int32(kind),
                                      _scalar(z.dtype, p0), _scalar(z.dtype, p1)))
    return z


def act_backward(grad, a, kind: int, p0: float = 0.0, p1: float = 0.0):
    """``grad <- grad * f'(a)`` in place; grad and a of one shape and float dtype (may alias)."""
    _check("grad", grad)
    _check("a", a, dtype=grad.dtype)
    if a.shape != grad.shape:
        raise ValueError(f"grad {grad.shape} and a {a.shape} differ in shape")
    if kind not in _ELEMENTWISE_KINDS:
        raise ValueError(f"no act_backward kernel for activation kind {kind}")
    if kind == 0 or grad.size == 0:   # identity: f' = 1, nothing to do
        return grad
    fn = get_kernel("activations", f"act_backward_{_suffix(grad.dtype)}")
    fn((grid_1d(grad.size),), (BLOCK,), (grad, a, np.int64(grad.size), np.int32(kind),
                                         _scalar(grad.dtype, p0), _scalar(grad.dtype, p1)))
    return grad


def _sum_to_scalar(values, n: int, divisor: float, out):
    """``out[()] = sum(values[:n]) / divisor`` by one block in a fixed order; values float64."""
    fn = get_kernel("reduce", f"sum_to_scalar_{_suffix(out.dtype)}")
    fn((1,), (BLOCK,), (values, np.int64(n), np.float64(divisor), out))
    return out


def softmax_xent(logits, labels, grad, row_loss, loss_out):
    """Fused softmax + cross-entropy + gradient from integer labels.

    logits (N, C) float; labels (N,) int64; grad (N, C) receives ``(softmax - e(y)) / N``
    (may be ``logits`` itself); row_loss (N,) float64 scratch receives per-row losses;
    loss_out a 0-d array of the logits' dtype receives the mean loss. Two launches.
    """
    _check("logits", logits, ndim=2)
    _check("labels", labels, dtype=np.int64, ndim=1)
    _check("grad", grad, dtype=logits.dtype, ndim=2)
    _check("row_loss", row_loss, dtype=np.float64, ndim=1)
    _check("loss_out", loss_out, dtype=logits.dtype, ndim=0)
    rows, cols = logits.shape
    if grad.shape != logits.shape or labels.shape[0] != rows or row_loss.shape[0] != rows:
        raise ValueError(f"shapes disagree: logits {logits.shape}, labels {labels.shape}, "
                         f"grad {grad.shape}, row_loss {row_loss.shape}")
    if rows == 0 or cols == 0:
        raise ValueError("softmax_xent needs at least one row and one column")
    layout = row_layout(rows, cols, logits.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_xent_{layout.kernel}_{_suffix(logits.dtype)}", layout,
                 (logits, labels, np.int64(rows), np.int64(cols), np.int32(layout.mode), grad, row_loss))
    return _sum_to_scalar(row_loss, rows, float(rows), loss_out)


def softmax(z, out):
    """Row-wise softmax of z (N, C) into out (same shape and dtype; may be z)."""
    _check("z", z, ndim=2)
    _check("out", out, dtype=z.dtype, ndim=2)
    if out.shape != z.shape:
        raise ValueError(f"out {out.shape} and z {z.shape} differ in shape")
    rows, cols = z.shape
    if z.size == 0:
        return out
    layout = row_layout(rows, cols, z.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_{layout.kernel}_{_suffix(z.dtype)}", layout,
                 (z, np.int64(rows), np.int64(cols), np.int32(layout.mode), out))
    return out


def mse_grad(a, targets, kind: int, p0: float, p1: float, grad, block_sums, loss_out):
    """MSE loss and its gradient at the output pre-activation.

    a, targets, grad (N, K) of one float dtype (grad may be a); block_sums float64 scratch
    with ``reduction_grid(N*K)`` entries; loss_out 0-d receives ``1/(2N) sum (a - y)^2``.
    grad receives ``((a - y) / N) * f'(a)``. Two launches.
    """
    _check("a", a, ndim=2)
    _check("targets", targets, dtype=a.dtype, ndim=2)
    _check("grad", grad, dtype=a.dtype, ndim=2)
    _check("block_sums", block_sums, dtype=np.float64, ndim=1)
    _check("loss_out", loss_out, dtype=a.dtype, ndim=0)
    if targets.shape != a.shape or grad.shape != a.shape:
        raise ValueError(f"shapes disagree: a {a.shape}, targets {targets.shape}, grad {grad.shape}")
    if kind not in _ELEMENTWISE_KINDS:
        raise ValueError(f"no mse_grad kernel for activation kind {kind}")
    rows, cols = a.shape
    if a.size == 0:
        raise ValueError("mse_grad needs at least one element")
    grid = reduction_grid(a.size)
    if block_sums.shape[0] < grid:
        raise ValueError(f"block_sums needs {grid} entries, has {block_sums.shape[0]}")
    fn = get_kernel("mse", f"mse_grad_{_suffix(a.dtype)}")
    fn((grid,), (BLOCK,), (a, targets, np.int64(rows), np.int64(cols), np.int32(kind),
                           _scalar(a.dtype, p0), _scalar(a.dtype, p1), grad, block_sums))
    return _sum_to_scalar(block_sums, grid, 2.0 * rows, loss_out)


def column_sums(x, out, partial=None):
    """Column sums of x (N, n) into out (n,), deterministic. ``partial``: float64 scratch of
    at least ``chunks * n`` entries (``column_sums_chunks``); may be None with one chunk."""
    _check("x", x, ndim=2)
    _check("out", out, dtype=x.dtype, ndim=1)
    rows, cols = x.shape
    if out.shape[0] != cols:
        raise ValueError(f"out has {out.shape[0]} entries for {cols} columns")
    if cols == 0:
        return out
    if rows == 0:
        out.fill(0)
        return out
    chunks, rows_per_chunk = column_sums_chunks(rows, cols)
    suffix = _suffix(x.dtype)
    if partial is None:
        if chunks > 1:
            raise ValueError(f"column_sums over {chunks} row chunks needs a partial buffer")
        import cupy
        partial = cupy.empty(1, dtype=np.float64)   # not written with one chunk
    _check("partial", partial, dtype=np.float64, ndim=1)
    if chunks > 1 and partial.shape[0] < chunks * cols:
        raise ValueError(f"partial needs {chunks * cols} entries, has {partial.shape[0]}")
    tiles = min(-(-cols // 32), 65535)
    fn = get_kernel("reduce", f"column_sums_{suffix}")
    fn((tiles, chunks), (32, 8), (x, np.int64(rows), np.int64(cols), np.int64(rows_per_chunk),
                                  partial, out))
    if chunks > 1:
        finish = get_kernel("reduce", f"column_sums_finish_{suffix}")
        finish((grid_1d(cols),), (BLOCK,), (partial, np.int64(chunks), np.int64(cols), out))
    return out


def sumsq(x, block_sums, out):
    """``out[()] = sum(x**2)`` over the C-contiguous x, deterministic; block_sums float64
    scratch with ``reduction_grid(x.size)`` entries. Two launches."""
    _check("x", x)
    _check("block_sums", block_sums, dtype=np.float64, ndim=1)
    _check("out", out, dtype=x.dtype, ndim=0)
    grid = reduction_grid(x.size)
    if block_sums.shape[0] < grid:
        raise ValueError(f"block_sums needs {grid} entries, has {block_sums.shape[0]}")
    suffix = _suffix(x.dtype)
    fn = get_kernel("reduce", f"sumsq_partial_{suffix}")
    fn((grid,), (BLOCK,), (x, np.int64(x.size), block_sums))
    return _sum_to_scalar(block_sums, grid, 1.0, out)


def sgd_update(params, grads, velocity, *, lr, momentum, nesterov, weight_decay, n_decay, scale, skip):
    """One SGD step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads (P,) and velocity (P,) or None (momentum == 0) of one float dtype; scale a
    0-d device array of that dtype; skip a 0-d device bool array.
    """
    _check("params", params, ndim=1)
    _check("grads", grads, dtype=params.dtype, ndim=1)
    _check("scale", scale, dtype=params.dtype, ndim=0)
    _check("skip", skip, dtype=np.bool_, ndim=0)
    if grads.shape != params.shape:
        raise ValueError(f"grads {grads.shape} and params {params.shape} differ in shape")
    if momentum:
        if velocity is None:
            raise ValueError("momentum > 0 needs a velocity buffer")
        _check("velocity", velocity, dtype=params.dtype, ndim=1)
        if velocity.shape != params.shape:
            raise ValueError(f"velocity {velocity.shape} and params {params.shape} differ in shape")
    else:
        velocity = params  # never touched when momentum == 0
    if params.size == 0:
        return params
    t = params.dtype.type
    fn = get_kernel("optim", f"sgd_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, velocity, np.int64(params.size), np.int64(n_decay), t(lr), t(momentum),
        t(weight_decay), np.int32(bool(nesterov)), scale, skip))
    return params


def adam_update(params, grads, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, step, weight_decay,
                decoupled_weight_decay, n_decay, scale, skip):
    """One Adam/AdamW step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads, exp_avg, exp_avg_sq (P,) of one float dtype; scale a 0-d device array of
    that dtype; skip a 0-d device bool array; ``step`` the 1-based step count. The bias
    corrections and the other derived scalars are computed in double here and rounded once
    to the kernel's type, as the NumPy reference rounds its Python floats.
    """
    _check("params", params, ndim=1)
    for name, arr in (("grads", grads), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _check(name, arr, dtype=params.dtype, ndim=1)
        if arr.shape != params.shape:
            raise ValueError(f"{name} {arr.shape} and params {params.shape} differ in shape")
    _check("scale", scale, dtype=params.dtype, ndim=0)
    _check("skip", skip, dtype=np.bool_, ndim=0)
    if int(step) < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if params.size == 0:
        return params
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    bias_correction1 = 1.0 - beta1 ** int(step)
    bias_correction2 = 1.0 - beta2 ** int(step)
    decoupled = float(decoupled_weight_decay)
    t = params.dtype.type
    fn = get_kernel("optim", f"adam_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, exp_avg, exp_avg_sq, np.int64(params.size), np.int64(n_decay), t(lr / bias_correction1),
        t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(math.sqrt(bias_correction2)), t(eps),
        t(weight_decay), t(1.0 - lr * decoupled), np.int32(decoupled != 0.0), scale, skip))
    return params


def rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, *, lr, alpha, eps, momentum, centered,
                   weight_decay, n_decay, scale, skip):
    """One RMSprop step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads, square_avg (P,) of one float dtype; grad_avg (P,) when ``centered`` and
    momentum_buf (P,) when ``momentum`` != 0, else None; scale a 0-d device array of the
    dtype; skip a 0-d device bool array.
    """
    _check("params", params, ndim=1)
    buffers = [("grads", grads), ("square_avg", square_avg)]
    if centered:
        if grad_avg is None:
            raise ValueError("centered=True needs a grad_avg buffer")
        buffers.append(("grad_avg", grad_avg))
    else:
        grad_avg = params   # never touched when not centered
    if momentum:
        if momentum_buf is None:
            raise ValueError("momentum > 0 needs a momentum_buf buffer")
        buffers.append(("momentum_buf", momentum_buf))
    else:
        momentum_buf = params   # never touched when momentum == 0
    for name, arr in buffers:
        _check(name, arr, dtype=params.dtype, ndim=1)
        if arr.shape != params.shape:
            raise ValueError(f"{name} {arr.shape} and params {params.shape} differ in shape")
    _check("scale", scale, dtype=params.dtype, ndim=0)
    _check("skip", skip, dtype=np.bool_, ndim=0)
    if params.size == 0:
        return params
    t = params.dtype.type
    fn = get_kernel("optim", f"rmsprop_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, square_avg, grad_avg, momentum_buf, np.int64(params.size), np.int64(n_decay), t(lr),
        t(alpha), t(1.0 - float(alpha)), t(eps), t(momentum), t(weight_decay), np.int32(bool(centered)),
        scale, skip))
    return params
