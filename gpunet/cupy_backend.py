"""The GPU backend: the NumPy reference ops on CuPy arrays, with the fusable ones replaced by
the CUDA kernels of ``kernels/*.cu`` (launched through ``gpunet.cuda``).

``CupyBackend`` overrides only ``bias_act``, ``activate``, ``act_backward``, ``bias_grad``,
``softmax_xent``, ``softmax``, ``sigmoid_bce``, ``poisson_exp``, ``mse_grad``, ``sumsq``,
``sgd_update``, ``adam_update`` and ``rmsprop_update`` (plus the array plumbing and the GEMM
precision switch). Anything a kernel does not cover (float16,
non-contiguous views, softmax outputs under MSE, one-hot or soft targets, a custom
activation) falls back to ``super()``, i.e. the reference math run by CuPy.

Nothing here reads a value back to the host: losses come back as 0-d device arrays, and the
clipping scale and the skip flag of the optimizer stay on the device. All launches go to
the current stream. The small scratch buffers below are reused from call to call, one set
per thread: work one thread queues on a stream runs in order, and two threads never share
a buffer (which their interleaved launches would overwrite).
"""
from __future__ import annotations

import os
import threading

import cupy
import numpy as np

from .activations import kernel_id_of
from .cuda import launch, layout
from .numpy_backend import NumpyBackend

__all__ = ["CupyBackend"]

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fusable(*arrays) -> bool:
    """All CuPy, C-contiguous, of one dtype that the kernels are instantiated for."""
    first = arrays[0]
    if not isinstance(first, cupy.ndarray) or first.dtype not in _KERNEL_DTYPES:
        return False
    for arr in arrays:
        if not isinstance(arr, cupy.ndarray) or arr.dtype != first.dtype or not arr.flags.c_contiguous:
            return False
    return True


def _data_ptr(a) -> int:
    return a.data.ptr


def _same_or_disjoint(a, b) -> bool:
    """True when a and b are the very same buffer (aliasing a kernel allows) or do not overlap."""
    if _data_ptr(a) == _data_ptr(b) and a.shape == b.shape and a.strides == b.strides:
        return True
    return not cupy.may_share_memory(a, b)


class _StreamToken:
    """A CUDA stream as ``CupyBackend.current_stream`` names it: equal for the same stream.

    The per-thread default stream has one handle that means a different stream in every
    thread, so its token carries the thread, and from another thread it is not reachable
    (no event can be queued on it there; ordering against it synchronizes instead).
    """

    __slots__ = ("stream", "key")

    def __init__(self, stream):
        self.stream = stream
        per_thread = stream.ptr == cupy.cuda.Stream.ptds.ptr
        self.key = (stream.ptr, threading.get_ident() if per_thread else None)

    def reachable(self) -> bool:
        return self.key[1] is None or self.key[1] == threading.get_ident()

    def __eq__(self, other):
        return isinstance(other, _StreamToken) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


class CupyBackend(NumpyBackend):
    """NumPy reference ops on CuPy arrays, with fused CUDA kernels for the hot ones.

    ``allow_tf32``: let cuBLAS run float32 GEMMs on TF32 tensor cores (about 10 mantissa
    bits per product: faster, less exact). Off by default, so float32 GEMMs are exact
    FP32 even if ``CUPY_TF32=1`` is set for other code. Opt in with
    ``CupyBackend(allow_tf32=True)``, ``gn.get_backend().allow_tf32 = True``, or the
    environment variable ``GPUNET_ALLOW_TF32=1`` (read when the backend is created). The
    switch sets CuPy's per-dtype GEMM compute type (``cupy._core.set_compute_type``, the
    setting ``CUPY_TF32`` initialises) around gpunet's own GEMMs only and restores it after.
    """

    name = "cupy"
    xp = cupy
    host_reads_are_free = False     # a read waits for the queued work: the fit loop reads once an epoch

    def __init__(self, allow_tf32: bool | None = None):
        if allow_tf32 is None:
            allow_tf32 = os.environ.get("GPUNET_ALLOW_TF32", "").strip().lower() in ("1", "true", "yes", "on")
        if not isinstance(allow_tf32, bool):
            raise TypeError(f"allow_tf32 must be a bool, got {type(allow_tf32).__name__}")
        self.allow_tf32 = allow_tf32
        self._per_thread = threading.local()   # .buffers: (tag, device) -> float64 scratch, grown as needed
        self._constants: dict = {}   # (value, dtype, device) -> 0-d device array, read-only once made

    # ---- arrays -------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else np.asarray(x)

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    # ---- ordering work across streams (gpunet.concurrency) ------------------------------
    def current_stream(self):
        return _StreamToken(cupy.cuda.get_current_stream())

    def synchronize_device(self):
        cupy.cuda.Device().synchronize()

    def wait_for_stream(self, stream):
        if stream is None or stream == self.current_stream():
            return
        if not stream.reachable():
            self.synchronize_device()
            return
        event = cupy.cuda.Event(block=False, disable_timing=True)
        event.record(stream.stream)
        cupy.cuda.get_current_stream().wait_event(event)

    def _scratch(self, tag: str, n: int):
        """A float64 device buffer of at least n entries, reused across this thread's calls
        (one per tag)."""
        buffers = getattr(self._per_thread, "buffers", None)
        if buffers is None:
            buffers = self._per_thread.buffers = {}
        key = (tag, cupy.cuda.runtime.getDevice())
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < n:
            buf = cupy.empty(max(n, 1), dtype=np.float64)
            buffers[key] = buf
        return buf[:n]

    def _constant_zeros(self, n, dtype):
        """A cached device vector of n zeros (the bias of an activation applied alone)."""
        key = ("zeros", n, np.dtype(dtype).str, cupy.cuda.runtime.getDevice())
        arr = self._constants.get(key)
        if arr is None:
            arr = self._constants[key] = cupy.zeros(n, dtype=dtype)
        return arr

    def _constant(self, value, dtype):
        """A cached 0-d device array holding ``value`` (made once, by a fill kernel: no copy)."""
        key = (value, np.dtype(dtype).str, cupy.cuda.runtime.getDevice())
        arr = self._constants.get(key)
        if arr is None:
            arr = cupy.full((), value, dtype=dtype)
            self._constants[key] = arr
        return arr

    # ---- dense layer --------------------------------------------------------------
    def matmul(self, a, b, out=None):
        """``a @ b`` by cuBLAS into ``out``; float32 in exact FP32 unless ``allow_tf32``."""
        if a.dtype != np.float32 or b.dtype != np.float32:
            return cupy.matmul(a, b, out=out)
        from cupy._core import _routines_linalg as linalg
        want = linalg.COMPUTE_TYPE_TF32 if self.allow_tf32 else linalg.COMPUTE_TYPE_FP32
        previous = linalg.get_compute_type(np.float32)
        if previous == want:
            return cupy.matmul(a, b, out=out)
        linalg.set_compute_type(np.float32, want)
        try:
            return cupy.matmul(a, b, out=out)
        finally:
            linalg.set_compute_type(np.float32, previous)

    def bias_act(self, z, b, act):
        kind = kernel_id_of(act)
        if kind is None or not _fusable(z, b) or z.ndim != 2 or b.shape != (z.shape[1],):
            return super().bias_act(z, b, act)
        p0, p1 = act.kernel_params
        return launch.bias_act(z, b, kind, p0, p1)

    def act_backward(self, grad, a, act):
        kind = kernel_id_of(act)
        if kind is None or not _fusable(grad, a) or grad.shape != a.shape or not _same_or_disjoint(grad, a):
            return super().act_backward(grad, a, act)
        p0, p1 = act.kernel_params
        return launch.act_backward(grad, a, kind, p0, p1)

    def bias_grad(self, delta, out=None):
        if not _fusable(delta) or delta.ndim != 2:
            return super().bias_grad(delta, out=out)
        cols = delta.shape[1]
        if out is None:
            out = cupy.empty(cols, dtype=delta.dtype)
        elif not _fusable(delta, out) or out.shape != (cols,) or cupy.may_share_memory(out, delta):
            return super().bias_grad(delta, out=out)
        chunks, _ = layout.column_sums_chunks(*delta.shape)
        partial = self._scratch("column_sums", max(1, chunks * cols))   # unused with one chunk
        return launch.column_sums(delta, out, partial)

    # ---- losses at the output -----------------------------------------------------
    def softmax(self, z, out=None):
        if out is None and _fusable(z):
            out = cupy.empty_like(z)
        if not _fusable(z, out) or z.ndim != 2 or out.shape != z.shape or not _same_or_disjoint(z, out) \
                or z.size == 0:
            return super().softmax(z, out=out)
        return launch.softmax(z, out)

    def softmax_xent(self, logits, labels, grad_out, row_scale=None):
        if (not _fusable(logits, grad_out) or logits.ndim != 2 or grad_out.shape != logits.shape
                or not isinstance(labels, cupy.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu"
                or labels.shape[0] != logits.shape[0] or logits.size == 0
                or not _same_or_disjoint(logits, grad_out)
                or (row_scale is not None and not isinstance(row_scale, cupy.ndarray))):
            return super().softmax_xent(logits, labels, grad_out, row_scale)
        if labels.dtype != np.int64 or not labels.flags.c_contiguous:
            labels = cupy.ascontiguousarray(labels, dtype=np.int64)
        rows = logits.shape[0]
        row_loss = self._scratch("row_loss", rows)
        loss = cupy.empty((), dtype=logits.dtype)   # fresh: the caller may keep it
        loss = launch.softmax_xent(logits, labels, grad_out, row_loss, loss)
        if row_scale is None:
            return loss
        # weighted examples: the kernel's per-row losses and gradient rows, scaled after it
        grad_out *= row_scale[:, None]
        return (row_loss @ row_scale.astype(np.float64) / rows).astype(logits.dtype)

    def activate(self, z, act):
        if not act.elementwise:
            return self.softmax(z, out=z)
        kind = kernel_id_of(act)
        if kind is None or not _fusable(z) or z.ndim != 2:
            return super().activate(z, act)
        p0, p1 = act.kernel_params
        return launch.bias_act(z, self._constant_zeros(z.shape[1], z.dtype), kind, p0, p1)

    def _canonical_loss(self, name, logits, targets, grad_out, row_scale):
        """The fused kernel when the arrays suit it, else None (the caller falls back)."""
        if (not _fusable(logits, targets, grad_out) or logits.ndim != 2 or logits.size == 0
                or targets.shape != logits.shape or grad_out.shape != logits.shape
                or not _same_or_disjoint(logits, grad_out) or cupy.may_share_memory(targets, grad_out)
                or (row_scale is not None and (not _fusable(row_scale, logits) or row_scale.ndim != 1))):
            return None
        block_sums = self._scratch("block_sums", layout.reduction_grid(logits.size))
        loss = cupy.empty((), dtype=logits.dtype)
        return launch.canonical_loss(name, logits, targets, row_scale, grad_out, block_sums, loss)

    def sigmoid_bce(self, logits, targets, grad_out, row_scale=None):
        loss = self._canonical_loss("sigmoid_bce", logits, targets, grad_out, row_scale)
        return super().sigmoid_bce(logits, targets, grad_out, row_scale) if loss is None else loss

    def poisson_exp(self, logits, targets, grad_out, row_scale=None):
        loss = self._canonical_loss("poisson_exp", logits, targets, grad_out, row_scale)
        return super().poisson_exp(logits, targets, grad_out, row_scale) if loss is None else loss

    def mse_grad(self, a, targets, act, grad_out, row_scale=None):
        kind = kernel_id_of(act)
        if (kind is None or not _fusable(a, targets, grad_out) or a.ndim != 2 or a.size == 0
                or targets.shape != a.shape or grad_out.shape != a.shape or row_scale is not None
                or not _same_or_disjoint(a, grad_out) or cupy.may_share_memory(targets, grad_out)):
            # weighted examples take the reference chain (the kernel sums over all elements)
            return super().mse_grad(a, targets, act, grad_out, row_scale)
        p0, p1 = act.kernel_params
        block_sums = self._scratch("block_sums", layout.reduction_grid(a.size))
        loss = cupy.empty((), dtype=a.dtype)
        return launch.mse_grad(a, targets, kind, p0, p1, grad_out, block_sums, loss)

    # ---- optimizer ----------------------------------------------------------------
    def sumsq(self, x):
        if not _fusable(x):
            return super().sumsq(x)
        block_sums = self._scratch("block_sums", layout.reduction_grid(x.size))
        return launch.sumsq(x, block_sums, cupy.empty((), dtype=x.dtype))

    def sgd_update(self, params, grads, velocity, hyper, *, n_decay, scale, skip):
        arrays = (params, grads, velocity) if hyper.momentum else (params, grads)
        if not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays):
            return super().sgd_update(params, grads, velocity, hyper, n_decay=n_decay, scale=scale, skip=skip)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:      # a true host flag: nothing to launch
            return params
        return launch.sgd_update(params, grads, velocity, hyper, n_decay=int(n_decay), scale=flags[0], skip=flags[1])

    def _device_scale_and_skip(self, scale, skip, dtype):
        """(scale, skip) as the 0-d device arrays the optimizer kernels read, or None when
        ``skip`` is a true host flag (nothing to launch). The usual scale of one (no
        clipping) is a cached device constant, so no step allocates it."""
        if isinstance(skip, cupy.ndarray):
            if skip.size != 1:
                raise ValueError(f"skip must be a single flag, got shape {skip.shape}")
            skip = skip.reshape(()).astype(np.bool_, copy=False)
        elif bool(skip):
            return None
        else:
            skip = self._constant(False, np.bool_)
        if isinstance(scale, cupy.ndarray):
            if scale.size != 1:
                raise ValueError(f"scale must be a single factor, got shape {scale.shape}")
            scale = scale.reshape(()).astype(dtype, copy=False)
        elif float(scale) == 1.0:
            scale = self._constant(1.0, dtype)
        else:
            scale = cupy.full((), float(scale), dtype=dtype)
        return scale, skip

    def adam_update(self, params, grads, exp_avg, exp_avg_sq, hyper, *, step, n_decay, scale, skip):
        arrays = (params, grads, exp_avg, exp_avg_sq)
        if not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays):
            return super().adam_update(params, grads, exp_avg, exp_avg_sq, hyper, step=step, n_decay=n_decay,
                                       scale=scale, skip=skip)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            return params
        return launch.adam_update(params, grads, exp_avg, exp_avg_sq, hyper, step=int(step), n_decay=int(n_decay),
                                  scale=flags[0], skip=flags[1])

    def rmsprop_update(self, params, grads, square_avg, grad_avg, momentum_buf, hyper, *, n_decay, scale, skip):
        arrays = [params, grads, square_avg] + ([grad_avg] if hyper.centered else []) \
            + ([momentum_buf] if hyper.momentum else [])
        if not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays):
            return super().rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper,
                                          n_decay=n_decay, scale=scale, skip=skip)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            return params
        return launch.rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper, n_decay=int(n_decay),
                                     scale=flags[0], skip=flags[1])
