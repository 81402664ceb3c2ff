"""kernels/*.cu built for the host (cuda_host.h) and launched like ``cupy.RawKernel``.

Each topic is compiled from the very text ``gpunet.cuda.sources`` hands to ``cupy.RawModule``
(``module_source``: the common.cuh prelude, the generated activations, then the topic) into
a shared library with one ``launch_<kernel>`` entry point per ``extern "C" __global__`` kernel.
A ``HostKernel`` checks a launch the way the device would refuse it (argument count and C
types, block and grid limits, ``__launch_bounds__``, dynamic shared memory over the granted
size) and runs it.
Arguments are NumPy arrays (device pointers) and NumPy scalars of the parameter's exact C
type: a Python float passed for a ``float`` would be a double on the device, so it is refused.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from gpunet.cuda import sources

HEADER = Path(__file__).with_name("cuda_host.h")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\((\d+)\)\s+)?(\w+)\s*\(([^)]*)\)')
_DYNAMIC_SMEM = "extern __shared__ double gn_dynamic_smem[];"
_POINTERS = {"float*": np.float32, "double*": np.float64, "longlong*": np.int64, "bool*": np.bool_,
             "unsigned*": np.uint32, "unsignedchar*": np.uint8}
_SCALARS = {"float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double),
            "longlong": (np.int64, ctypes.c_longlong), "int": (np.int32, ctypes.c_int)}
DEFAULT_SMEM_LIMIT = 48 * 1024   # what a kernel gets before it opts into more
# One launch runs at a time, as on one device queue: the fiber scheduler of cuda_host.h keeps
# its state in globals, and ctypes lets threads call in side by side. Launches of different
# threads still interleave between one another, as they do on a GPU.
_LAUNCH_LOCK = threading.Lock()


def compiler() -> str | None:
    return shutil.which("g++")


def _signature(params: str) -> tuple[list[str], list[str]]:
    """(C types without const/spaces, names) of a kernel's parameter list."""
    types, names = [], []
    for param in (p.strip() for p in " ".join(params.split()).split(",")):
        name = re.findall(r"\w+", param)[-1]
        ctype = param[: param.rfind(name)].replace("const", "").replace("__restrict__", "")
        types.append(ctype.replace(" ", ""))
        names.append(name)
    return types, names


def build(dest: Path) -> dict[str, "HostKernel"]:
    """Compile every topic into ``dest`` (reused when the sources are unchanged);
    ``{kernel name: HostKernel}``."""
    gxx = compiler()
    if gxx is None:
        raise RuntimeError("g++ is not on PATH: the kernel emulator needs a C++17 compiler")
    dest.mkdir(parents=True, exist_ok=True)
    kernels = {}
    for topic, path in sources.kernel_sources().items():
        text = sources.module_source(path)
        if text.count(_DYNAMIC_SMEM) > 1:
            raise RuntimeError(f"{path.name}: the emulator maps one dynamic shared array per topic")
        text = text.replace(_DYNAMIC_SMEM, "double* gn_dynamic_smem = emu::dynamic_smem;")
        lines = [f'#include "{HEADER}"', text]
        found = []
        for bound, name, params in _KERNEL.findall(text):
            types, names = _signature(params)
            found.append((name, types, int(bound) if bound else 1024))
            lines.append(f'extern "C" int launch_{name}(unsigned gx, unsigned gy, unsigned bx, unsigned by, '
                         f'{params}) {{ return emu::run(gx, gy, bx, by, [&] {{ {name}({", ".join(names)}); }}); }}')
        source = "\n".join(lines)
        digest = hashlib.sha256((source + HEADER.read_text()).encode()).hexdigest()[:16]
        lib = dest / f"{topic}-{digest}.so"
        if not lib.exists():
            cpp = dest / f"{topic}.cpp"
            cpp.write_text(source)
            # -U_FORTIFY_SOURCE: glibc's checked longjmp refuses the jumps between fiber stacks
            cmd = [gxx, "-std=c++17", "-O1", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-fPIC", "-shared",
                   str(cpp), "-o", str(lib)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        so = ctypes.CDLL(str(lib))
        for name, types, bound in found:
            kernels[name] = HostKernel(name, getattr(so, f"launch_{name}"), types, bound)
    return kernels


class HostKernel:
    """A kernel of the host build, called as ``cupy.RawKernel``: ``k(grid, block, args, shared_mem=0)``.
    ``after_launch(kernel, args)``, when set, checks each launch afterwards."""

    after_launch = None

    def __init__(self, name, entry, types, launch_bound):
        self.name, self.types, self.launch_bound = name, types, launch_bound
        self.max_dynamic_shared_size_bytes = DEFAULT_SMEM_LIMIT
        self.launches = 0
        self._entry = entry
        self._entry.restype = ctypes.c_int

    # ``recorder(kernel, grid, block, args, shared_mem)``, when set, sees each checked launch
    # first; a true return means it kept the launch (a stream capture) instead of running it
    recorder = None

    def __call__(self, grid, block, args, shared_mem=0):
        cargs = self._checked(grid, block, args, shared_mem)
        if self.recorder is not None and self.recorder(self, grid, block, args, shared_mem):
            return
        with _LAUNCH_LOCK:
            self.launches += 1
            self._run(cargs, args)

    def replay(self, grid, block, args, shared_mem=0):
        """Run a launch a graph recorded (not counted: the graph launch is)."""
        cargs = self._checked(grid, block, args, shared_mem)
        with _LAUNCH_LOCK:
            self._run(cargs, args)

    def _run(self, cargs, args):
        if self._entry(*cargs) != 0:
            raise RuntimeError(f"{self.name}: the threads of a block deadlocked at a barrier")
        if self.after_launch is not None:
            self.after_launch(self, args)

    def _checked(self, grid, block, args, shared_mem):
        """The C arguments of a launch, after CUDA's limits and every argument's C type are checked."""
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        threads = block[0] * block[1] * block[2]
        if grid[2] != 1 or block[2] != 1:
            raise ValueError(f"{self.name}: the emulator runs 2-D grids and blocks, got {grid} x {block}")
        if not (1 <= grid[0] <= 2**31 - 1 and 1 <= grid[1] <= 65535):
            raise ValueError(f"{self.name}: grid {grid} is out of CUDA's limits")
        if not 1 <= threads <= min(1024, self.launch_bound):
            raise ValueError(f"{self.name}: {threads} threads per block (launch bound {self.launch_bound})")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, "
                             f"{self.max_dynamic_shared_size_bytes} granted")
        if len(args) != len(self.types):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.types)} parameters")
        cargs = [ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]), ctypes.c_uint(block[1])]
        for i, (ctype, arg) in enumerate(zip(self.types, args)):
            if ctype.endswith("*"):
                want = _POINTERS[ctype]
                if not isinstance(arg, np.ndarray) or arg.dtype != want or not arg.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) got "
                                    f"{getattr(arg, 'dtype', type(arg).__name__)}")
                cargs.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                want, cvalue = _SCALARS[ctype]
                if type(arg) is not want:
                    raise TypeError(f"{self.name}: argument {i} ({ctype}) got {type(arg).__name__}")
                cargs.append(cvalue(arg.item()))
        return cargs
