"""The CUDA sources: finding them, the text compiled for a topic, loading it, compiling offline.

Each topic file (``activations.cu``, ``softmax_xent.cu``, ...) is compiled once per process
and device through ``cupy.RawModule`` the first time one of its kernels is launched; CuPy's
on-disk kernel cache (``~/.cupy/kernel_cache``) spares later processes the NVRTC run. The
kernels are ``extern "C"`` entry points named ``<kernel>_f32`` / ``<kernel>_f64``.

What is compiled for a topic (``module_source``) is ``kernels/common.cuh`` (device helpers),
then the element-wise activations generated from the registry in ``gpunet.activations``
(``activation_source``: one ``GnActivation<id>`` with ``forward`` and ``derivative`` per
activation that has a kernel id, and ``GN_FOR_EACH_ACTIVATION``, the list of ids the
kernels' switches cover), then the topic itself after a ``#line`` directive.

``compile_sources`` and ``compile_ptx`` compile without a GPU (NVRTC through
``cupy.cuda.nvrtc``, or ``nvcc -ptx``) with the flush-to-zero setting CuPy adds, for
``gpunet info`` and the tests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..activations import KERNEL_ACTIVATIONS

__all__ = ["KERNEL_TOPICS", "PRELUDE", "NVRTC_OPTIONS", "CUPY_APPENDED_OPTIONS", "kernel_dir", "kernel_sources",
           "module_source", "activation_source", "kernel_names", "get_kernel", "load_all", "compile_sources",
           "compile_ptx", "nvrtc_version", "nvcc_path"]

KERNEL_TOPICS = ("activations", "softmax_xent", "mse", "canonical_losses", "reduce", "step", "optim", "gemm")
PRELUDE = "common.cuh"      # device helpers put in front of every topic (see module_source)

# NVRTC 12/13 defaults to C++17, which the sources need at most; no options are required.
NVRTC_OPTIONS: tuple[str, ...] = ()
# What CuPy 14 appends to a RawModule's own options when it compiles with NVRTC
# (cupy/cuda/compiler.py; the last -ftz wins, so float instructions flush subnormals). The
# offline compiles below add them too, so they check what CuPy will build.
CUPY_APPENDED_OPTIONS: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")


# ---- the source texts ---------------------------------------------------------------------
def kernel_dir() -> Path:
    """The folder holding the ``.cu`` sources.

    In a source checkout (e.g. run with ``PYTHONPATH=$PWD``, or an editable install) that is
    ``<repo>/kernels``; in an installed wheel it is the ``gpunet.kernels`` package data.
    """
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "kernels"
    if checkout.is_dir() and any(checkout.glob("*.cu")):
        return checkout
    # the wheel puts them beside the package; gpunet.kernels has no __init__.py, and for such a
    # namespace package importlib.resources.files() gives a MultiplexedPath, not a folder
    path = package / "kernels"
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


def _indented(body: str) -> str:
    return "\n".join("        " + line.strip() for line in body.strip().splitlines())


def activation_source() -> str:
    """The device code of every element-wise activation with a kernel id, generated from
    ``gpunet.activations``: ``GnActivation<id>::forward(z, p0, p1)`` and
    ``::derivative(a, p0, p1)`` (through ``act_forward<T, KIND>``/``act_derivative<T, KIND>``),
    and ``GN_FOR_EACH_ACTIVATION(X)``, which expands ``X(id)`` once per id."""
    lines = ["// Generated from gpunet/activations.py (gpunet.cuda.sources.activation_source): the",
             "// element-wise activations the kernels implement, by kernel id; p0, p1 are the",
             "// activation's kernel_params. Only the ids listed in GN_FOR_EACH_ACTIVATION exist.",
             "template <int KIND> struct GnActivation;"]
    for kernel_id, cls in KERNEL_ACTIVATIONS.items():
        lines += [f"template <> struct GnActivation<{kernel_id}> {{   // {cls.name}",
                  "    template <typename T> static __device__ __forceinline__ T forward(T z, T p0, T p1) {",
                  _indented(cls.cuda_forward),
                  "    }",
                  "    template <typename T> static __device__ __forceinline__ T derivative(T a, T p0, T p1) {",
                  _indented(cls.cuda_derivative),
                  "    }",
                  "};"]
    ids = " ".join(f"X({kernel_id})" for kernel_id in KERNEL_ACTIVATIONS)
    lines += ["template <typename T, int KIND>",
              "__device__ __forceinline__ T act_forward(T z, T p0, T p1) { return GnActivation<KIND>::forward(z, p0, p1); }",
              "template <typename T, int KIND>",
              "__device__ __forceinline__ T act_derivative(T a, T p0, T p1) {",
              "    return GnActivation<KIND>::derivative(a, p0, p1);",
              "}",
              f"#define GN_FOR_EACH_ACTIVATION(X) {ids}"]
    return "\n".join(lines) + "\n"


_ENTRY_POINT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?(\w+)\s*\(')


def kernel_names(source: str) -> list[str]:
    """Names of the ``extern "C" __global__`` entry points declared in a source text."""
    return _ENTRY_POINT.findall(source)


def _entry_points_only(text: str, keep) -> str:
    """``text`` without the ``extern "C"`` entry points whose names are not in ``keep``: the
    templates behind them are then never instantiated, which is what makes a one-kernel
    module compile in a fraction of its topic's time."""
    pieces, pos = [], 0
    for match in _ENTRY_POINT.finditer(text):
        if match.group(1) in keep:
            continue
        depth, end = 0, text.index("{", match.end())
        while True:     # the wrapper's body: braces balance, and entry bodies hold no strings
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
            end += 1
        pieces.append(text[pos:match.start()])
        pos = end + 1
    pieces.append(text[pos:])
    return "".join(pieces)


def module_source(path: Path, kernels=None) -> str:
    """The text compiled for one topic: the shared device helpers of ``kernels/common.cuh``,
    the generated activations, then the topic's own source, with a ``#line`` so compiler
    messages point into it. With ``kernels`` (names), only those entry points are kept."""
    prelude = (kernel_dir() / PRELUDE).read_text(encoding="utf-8")
    topic = path.read_text(encoding="utf-8")
    if kernels is not None:
        topic = _entry_points_only(topic, set(kernels))
    return (f'{prelude}\n#line 1 "activations generated from gpunet/activations.py"\n{activation_source()}'
            f'#line 1 "{path.name}"\n{topic}')


def _path(topic: str) -> Path:
    sources = kernel_sources()
    if topic not in sources:
        raise FileNotFoundError(f"no kernels/{topic}.cu among {sorted(sources)}")
    return sources[topic]


# ---- loading (lazily, once per process and device) ----------------------------------------
# Each kernel is its own module, compiled from its topic with only its entry point kept: a
# process compiles the template instances it launches and no others (a whole softmax_xent.cu
# is every row-kernel variant for both dtypes). Two threads compiling the same kernel at once
# both build it; one result is kept (harmless).
_functions: dict = {}


def get_kernel(topic: str, name: str):
    """The ``cupy.RawKernel`` ``name`` of ``kernels/<topic>.cu`` (compiled on first use)."""
    import cupy
    key = (topic, name, cupy.cuda.runtime.getDevice())
    fn = _functions.get(key)
    if fn is None:
        source = module_source(_path(topic), kernels={name})
        if name not in kernel_names(source):
            raise KeyError(f"kernels/{topic}.cu has no kernel {name}")
        fn = cupy.RawModule(code=source, options=NVRTC_OPTIONS).get_function(name)
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
def _nvrtc_compile(source: str, filename: str, arch: str) -> tuple[str | None, str | None]:
    """Compile with NVRTC to PTX for ``arch`` ("sm_90" -> compute_90), with CuPy's options;
    (ptx, None) on success, else (None, the log)."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*NVRTC_OPTIONS, *CUPY_APPENDED_OPTIONS,
                                        f"--gpu-architecture=compute_{arch.removeprefix('sm_')}"])
        except nvrtc.NVRTCError as exc:
            return None, f"{exc}\n{nvrtc.getProgramLog(prog)}"
        ptx = nvrtc.getPTX(prog)
        return (ptx.decode() if isinstance(ptx, bytes) else ptx), None
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


def _nvcc_compile(source: str, filename: str, arch: str) -> tuple[str | None, str | None]:
    """``nvcc -ptx`` with CuPy's flush-to-zero setting; (ptx, None) or (None, the output)."""
    with tempfile.TemporaryDirectory() as tmp:
        # the same text RawModule compiles (prelude, activations, topic), so nvcc checks what will run
        full = Path(tmp) / filename
        full.write_text(source, encoding="utf-8")
        out = Path(tmp) / "out.ptx"
        cmd = [nvcc_path() or "nvcc", "-ptx", f"-arch={arch}", "-ftz=true", str(full), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return None, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return out.read_text(encoding="utf-8"), None


def _pick_compiler(compiler: str) -> str:
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
    return compiler


def _compile(compiler: str, path: Path, arch: str, kernels=None) -> tuple[str | None, str | None]:
    compile_text = _nvrtc_compile if compiler == "nvrtc" else _nvcc_compile
    return compile_text(module_source(path, kernels), path.name, arch)


def compile_ptx(topic: str, compiler: str = "auto", arch: str = "sm_90", kernels=None) -> str:
    """The PTX of ``kernels/<topic>.cu`` (of only the entry points ``kernels`` names, as
    ``get_kernel`` builds one) as CuPy would build it, no GPU needed; raises RuntimeError
    with the compiler's log when it does not compile."""
    compiler = _pick_compiler(compiler)
    ptx, error = _compile(compiler, _path(topic), arch, kernels)
    if error:
        raise RuntimeError(error)
    return ptx


def compile_sources(compiler: str = "auto", archs=("sm_80", "sm_90")) -> list[tuple[str, str, str, str | None]]:
    """Compile every ``kernels/*.cu`` for each architecture, launching nothing.

    ``compiler``: "nvrtc" (``cupy.cuda.nvrtc``; needs libnvrtc, not a GPU), "nvcc"
    (``nvcc -ptx``) or "auto" (NVRTC when it loads, else nvcc). Returns
    ``[(topic, compiler, arch, error_or_None)]``; raises RuntimeError when no compiler is there.
    """
    compiler = _pick_compiler(compiler)
    jobs = [(topic, path, arch) for topic, path in kernel_sources().items() for arch in archs]
    if compiler == "nvrtc":
        results = [_compile(compiler, path, arch) for _, path, arch in jobs]
    else:  # separate processes: run them side by side
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda job: _compile(compiler, job[1], job[2]), jobs))
    return [(topic, compiler, arch, error) for (topic, _, arch), (_, error) in zip(jobs, results)]
