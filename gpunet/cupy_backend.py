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

import contextlib

import os
import threading

import cupy
import numpy as np

from .activations import kernel_id_of
from .cuda import launch, layout
from .numpy_backend import NumpyBackend

__all__ = ["CupyBackend", "PinnedBatchUploader"]

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


def _gemm_operands(a, b, out) -> bool:
    """Whether gpunet's GEMM kernel takes a @ b into out: one float dtype, out C-contiguous and
    apart from a and b, each of a and b C-contiguous or a transposed C-contiguous array, not
    both transposed."""
    if not _fusable(out) or out.ndim != 2 or a.ndim != 2 or b.ndim != 2:
        return False
    transposed = []
    for x in (a, b):
        if not isinstance(x, cupy.ndarray) or x.dtype != out.dtype:
            return False
        if x.flags.c_contiguous:
            transposed.append(False)
        elif x.T.flags.c_contiguous:
            transposed.append(True)
        else:
            return False
        if cupy.may_share_memory(x, out):
            return False
    return not all(transposed)


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
        if isinstance(x, np.ndarray) and x.ndim and not (x.flags.c_contiguous and x.dtype.isnative
                                                         and (dtype is None or x.dtype == dtype)):
            x = np.asarray(x, dtype=dtype, order="C")   # one conversion on the host, then one copy over
        return cupy.asarray(x, dtype=dtype, order="C")

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
            if buf is not None:     # kept alive: a captured graph may still write to it
                self._per_thread.__dict__.setdefault("retired", []).append(buf)
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

    # ---- batches that come from the host (memory maps, streams) ---------------------------
    # the share of free device memory training data may take; the rest is for the step's buffers
    DEVICE_DATA_SHARE = 0.5

    def fits_on_device(self, nbytes: int) -> bool:
        try:
            free, _total = cupy.cuda.runtime.memGetInfo()
        except AttributeError:           # a stand-in without the query (the host emulator)
            return True
        pool = cupy.get_default_memory_pool()
        return nbytes <= self.DEVICE_DATA_SHARE * (free + pool.free_bytes())

    def batch_uploader(self):
        return PinnedBatchUploader()

    # ---- CUDA graphs -----------------------------------------------------------------
    can_capture_graphs = True

    def copy_to_device(self, dst, host):
        if not (isinstance(dst, cupy.ndarray) and dst.flags.c_contiguous):
            return super().copy_to_device(dst, host)
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))
        return dst

    def capture(self, fn):
        """Record the launches of ``fn()`` as a CUDA graph, without running them: on a stream
        of this thread's own, in capture. Inside, results that would be fresh 0-d arrays (a
        loss, a norm) are this thread's kept ones, since a graph writes to fixed addresses;
        they hold the last replay's value. Returns the graph: ``graph.launch()`` replays it on
        the current stream."""
        stream = getattr(self._per_thread, "capture_stream", None)
        if stream is None:
            stream = self._per_thread.capture_stream = cupy.cuda.Stream(non_blocking=True)
        for dtype in _KERNEL_DTYPES:       # made now: a capture allocates nothing
            self._keep_scalar(dtype)
        self._per_thread.capturing = True
        try:
            with stream:
                stream.begin_capture()
                try:
                    fn()
                finally:
                    graph = stream.end_capture()
        finally:
            self._per_thread.capturing = False
        return graph

    def _result_scalar(self, dtype):
        """A 0-d array for a result: fresh (the caller may keep it), or inside ``capture``
        this thread's kept one for the dtype."""
        if getattr(self._per_thread, "capturing", False):
            return self._keep_scalar(dtype)
        return cupy.empty((), dtype=dtype)

    def _keep_scalar(self, dtype):
        """This thread's kept 0-d result for ``dtype`` (made on first use)."""
        kept = getattr(self._per_thread, "kept_scalars", None)
        if kept is None:
            kept = self._per_thread.kept_scalars = {}
        key = (np.dtype(dtype).str, cupy.cuda.runtime.getDevice())
        if key not in kept:
            kept[key] = cupy.empty((), dtype=dtype)
        return kept[key]

    @contextlib.contextmanager
    def kernel_gemms(self):
        """Within the block (in this thread), ``matmul`` into a given ``out`` runs gpunet's GEMM
        kernel (kernels/gemm.cu) instead of cuBLAS: what a CUDA graph can capture."""
        before = getattr(self._per_thread, "kernel_gemms", False)
        self._per_thread.kernel_gemms = True
        try:
            yield
        finally:
            self._per_thread.kernel_gemms = before

    def matmul(self, a, b, out=None):
        """``a @ b`` by cuBLAS into ``out``; float32 in exact FP32 unless ``allow_tf32``.
        Inside ``kernel_gemms``, by gpunet's own kernel where the operands suit it."""
        if (out is not None and getattr(self._per_thread, "kernel_gemms", False) and _gemm_operands(a, b, out)):
            return launch.gemm(a, b, out)
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

    def act_backward(self, grad, a, act, bias_grad=None):
        kind = kernel_id_of(act)
        if kind is None or not _fusable(grad, a) or grad.shape != a.shape or not _same_or_disjoint(grad, a):
            return super().act_backward(grad, a, act, bias_grad)
        p0, p1 = act.kernel_params
        if bias_grad is None:
            return launch.act_backward(grad, a, kind, p0, p1)
        if (grad.ndim != 2 or not _fusable(grad, bias_grad) or bias_grad.shape != grad.shape[1:]
                or cupy.may_share_memory(bias_grad, grad) or cupy.may_share_memory(bias_grad, a)):
            launch.act_backward(grad, a, kind, p0, p1)
            self.bias_grad(grad, out=bias_grad)
            return grad
        chunks, _ = layout.column_sums_chunks(*grad.shape)
        partial = self._scratch("column_sums", max(1, chunks * grad.shape[1]))
        return launch.act_backward_colsum(grad, a, kind, p0, p1, bias_grad, partial)

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

    def softmax_xent(self, logits, labels, grad_out, row_scale=None, *, bias=None, hits=None):
        rows = logits.shape[0] if getattr(logits, "ndim", 0) == 2 else -1
        if (not _fusable(logits, grad_out) or logits.ndim != 2 or grad_out.shape != logits.shape
                or not isinstance(labels, cupy.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu"
                or labels.shape[0] != rows or logits.size == 0
                or not _same_or_disjoint(logits, grad_out)
                or (row_scale is not None and not (_fusable(row_scale, logits) and row_scale.shape == (rows,)))
                or (bias is not None and not (_fusable(bias, logits) and bias.shape == logits.shape[1:]))
                or (hits is not None and not (isinstance(hits, cupy.ndarray) and hits.shape == (rows,)
                                              and hits.dtype in (np.uint8, np.bool_) and hits.flags.c_contiguous))):
            return super().softmax_xent(logits, labels, grad_out, row_scale, bias=bias, hits=hits)
        if labels.dtype != np.int64 or not labels.flags.c_contiguous:
            labels = cupy.ascontiguousarray(labels, dtype=np.int64)
        row_loss = self._scratch("row_loss", rows)
        loss = self._result_scalar(logits.dtype)
        return launch.softmax_xent(logits, labels, grad_out, row_loss, loss, self._arrivals(), bias=bias,
                                   row_scale=row_scale,
                                   hits=None if hits is None else hits.view(np.uint8))

    def activate(self, z, act):
        if not act.elementwise:
            return self.softmax(z, out=z)
        kind = kernel_id_of(act)
        if kind is None or not _fusable(z) or z.ndim != 2:
            return super().activate(z, act)
        p0, p1 = act.kernel_params
        return launch.bias_act(z, self._constant_zeros(z.shape[1], z.dtype), kind, p0, p1)

    @staticmethod
    def _element_loss_fusable(z, targets, grad_out, row_scale, bias) -> bool:
        """Whether an element-wise loss kernel takes these arrays (else the reference runs)."""
        return (_fusable(z, targets, grad_out) and z.ndim == 2 and z.size > 0
                and targets.shape == z.shape and grad_out.shape == z.shape
                and _same_or_disjoint(z, grad_out) and not cupy.may_share_memory(targets, grad_out)
                and (row_scale is None or (_fusable(row_scale, z) and row_scale.shape == z.shape[:1]))
                and (bias is None or (_fusable(bias, z) and bias.shape == z.shape[1:])))

    def sigmoid_bce(self, logits, targets, grad_out, row_scale=None, *, bias=None, hits=None):
        if not self._element_loss_fusable(logits, targets, grad_out, row_scale, bias) or (
                hits is not None and not (isinstance(hits, cupy.ndarray) and hits.shape == logits.shape
                                          and hits.dtype in (np.uint8, np.bool_) and hits.flags.c_contiguous)):
            return super().sigmoid_bce(logits, targets, grad_out, row_scale, bias=bias, hits=hits)
        return launch.canonical_loss("sigmoid_bce", logits, targets, row_scale, grad_out, *self._loss_scratch(logits),
                                     bias=bias, hits=None if hits is None else hits.view(np.uint8))

    def poisson_exp(self, logits, targets, grad_out, row_scale=None, *, bias=None):
        if not self._element_loss_fusable(logits, targets, grad_out, row_scale, bias):
            return super().poisson_exp(logits, targets, grad_out, row_scale, bias=bias)
        return launch.canonical_loss("poisson_exp", logits, targets, row_scale, grad_out, *self._loss_scratch(logits),
                                     bias=bias)

    def mse_grad(self, a, targets, act, grad_out, row_scale=None, *, bias=None):
        kind = kernel_id_of(act)
        if kind is None or not self._element_loss_fusable(a, targets, grad_out, row_scale, bias):
            return super().mse_grad(a, targets, act, grad_out, row_scale, bias=bias)
        p0, p1 = act.kernel_params
        return launch.mse_grad(a, targets, kind, p0, p1, grad_out, *self._loss_scratch(a), row_scale=row_scale,
                               bias=bias)

    def _loss_scratch(self, z):
        """(block_sums, loss_out, arrivals) of an element-wise reduction over z in one launch:
        the thread's scratch and counter, and a fresh 0-d result (the caller may keep it)."""
        return (self._scratch("block_sums", layout.reduction_grid(z.size)), self._result_scalar(z.dtype),
                self._arrivals())

    def _arrivals(self):
        """This thread's zeroed counter for one-launch reductions (the last block resets it)."""
        key = ("arrivals", cupy.cuda.runtime.getDevice())
        counters = getattr(self._per_thread, "counters", None)
        if counters is None:
            counters = self._per_thread.counters = {}
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = cupy.zeros(1, dtype=np.uint32)
        return counter

    # ---- optimizer ----------------------------------------------------------------
    def sumsq(self, x):
        if not _fusable(x):
            return super().sumsq(x)
        return launch.sumsq(x, *self._loss_scratch(x))

    # ---- the bookkeeping of a fit step --------------------------------------------
    def gather_rows(self, idx, srcs, outs, *, step=None, step_stride=0):
        if (not isinstance(idx, cupy.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu"
                or not all(isinstance(a, cupy.ndarray) and a.flags.c_contiguous and a.itemsize % 4 == 0
                           for a in (*srcs, *outs))
                or any(o.dtype != a.dtype or o.shape[1:] != a.shape[1:] for a, o in zip(srcs, outs))
                or not 1 <= len(srcs) <= 3
                or (step is not None and not (isinstance(step, cupy.ndarray) and step.dtype == np.int64
                                              and step.ndim == 0))):
            return super().gather_rows(idx, srcs, outs, step=step, step_stride=step_stride)
        if idx.dtype != np.int64 or not idx.flags.c_contiguous:
            idx = cupy.ascontiguousarray(idx, dtype=np.int64)
        if step is None:
            step, step_stride = self._constant(0, np.int64), 0
        return launch.gather_rows(idx, srcs, outs, step, step_stride)

    def advance_step(self, counter):
        if not (isinstance(counter, cupy.ndarray) and counter.dtype == np.int64 and counter.ndim == 0):
            return super().advance_step(counter)
        return launch.advance_step(counter)

    def finish_step(self, loss, grads, sums, bad, scale, *, batch_weight, clip_norm, hits=None):
        weighted = isinstance(batch_weight, cupy.ndarray)
        if (not _fusable(loss, grads, scale) or loss.ndim != 0 or grads.ndim != 1
                or not isinstance(bad, cupy.ndarray) or bad.dtype != np.bool_ or bad.ndim != 0
                or not _fusable(sums) or sums.dtype != np.float64
                or (weighted and (batch_weight.ndim != 0 or batch_weight.dtype != loss.dtype))
                or (hits is not None and (not isinstance(hits, cupy.ndarray) or hits.ndim != 2
                                          or hits.dtype not in (np.uint8, np.bool_) or not hits.flags.c_contiguous))):
            return super().finish_step(loss, grads, sums, bad, scale, batch_weight=batch_weight,
                                       clip_norm=clip_norm, hits=hits)
        if hits is not None and hits.dtype == np.bool_:
            hits = hits.view(np.uint8)
        grad_parts = None
        if grads.size > launch.FINISH_SINGLE_BLOCK_MAX:
            grad_parts = self._scratch("block_sums", layout.reduction_grid(grads.size))
        return launch.finish_step(loss, grads, sums, bad, scale, batch_weight=batch_weight, clip_norm=clip_norm,
                                  hits=hits, grad_parts=grad_parts)

    def squared_error_sums(self, out, targets, sums, *, exp_outputs=False):
        if (not _fusable(out, targets) or out.ndim != 2 or targets.shape != out.shape
                or not isinstance(sums, cupy.ndarray) or sums.dtype != np.float64 or sums.shape != out.shape[1:]
                or not sums.flags.c_contiguous):
            return super().squared_error_sums(out, targets, sums, exp_outputs=exp_outputs)
        return launch.squared_error_sums(out, targets, sums, exp_outputs=exp_outputs)

    def sgd_update(self, params, grads, velocity, hyper, *, n_decay, scale, skip, step_table=None):
        arrays = (params, grads, velocity) if hyper.momentum else (params, grads)
        table = self._step_table_args(step_table, params.dtype)
        if (not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays)
                or table is None):
            return super().sgd_update(params, grads, velocity, hyper, n_decay=n_decay, scale=scale, skip=skip,
                                      step_table=step_table)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:      # a true host flag: nothing to launch
            return params
        return launch.sgd_update(params, grads, velocity, hyper, n_decay=int(n_decay), scale=flags[0], skip=flags[1],
                                 **table)

    def _step_table_args(self, step_table, dtype):
        """The optimizer kernels' (step_table, step, use_table) arguments, cached stand-ins
        when there is no table; None when the table does not suit the kernels."""
        if step_table is None:
            key = ("no_table", np.dtype(dtype).str, cupy.cuda.runtime.getDevice())
            rows = self._constants.get(key)
            if rows is None:
                rows = self._constants[key] = cupy.zeros((1, launch.STEP_TABLE_WIDTH), dtype=dtype)
            return {"step_table": rows, "step": self._constant(0, np.int64), "use_table": False}
        rows, step = step_table.rows, step_table.step
        if (not _fusable(rows) or rows.dtype != dtype or rows.ndim != 2 or rows.shape[1] != launch.STEP_TABLE_WIDTH
                or not isinstance(step, cupy.ndarray) or step.dtype != np.int64 or step.ndim != 0):
            return None
        return {"step_table": rows, "step": step, "use_table": True}

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

    def adam_update(self, params, grads, exp_avg, exp_avg_sq, hyper, *, step, n_decay, scale, skip, skipped=None,
                    step_table=None):
        arrays = (params, grads, exp_avg, exp_avg_sq)
        table = self._step_table_args(step_table, params.dtype)
        if (not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays)
                or table is None
                or (skipped is not None and not (isinstance(skipped, cupy.ndarray) and skipped.dtype == np.int64
                                                 and skipped.size == 1))):
            return super().adam_update(params, grads, exp_avg, exp_avg_sq, hyper, step=step, n_decay=n_decay,
                                       scale=scale, skip=skip, skipped=skipped, step_table=step_table)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            if skipped is not None:
                skipped += 1
            return params
        return launch.adam_update(params, grads, exp_avg, exp_avg_sq, hyper, t=int(step), n_decay=int(n_decay),
                                  scale=flags[0], skip=flags[1],
                                  skipped=self._constant(0, np.int64) if skipped is None else skipped.reshape(()),
                                  count_skips=skipped is not None, **table)

    def rmsprop_update(self, params, grads, square_avg, grad_avg, momentum_buf, hyper, *, n_decay, scale, skip,
                       step_table=None):
        arrays = [params, grads, square_avg] + ([grad_avg] if hyper.centered else []) \
            + ([momentum_buf] if hyper.momentum else [])
        table = self._step_table_args(step_table, params.dtype)
        if (not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays)
                or table is None):
            return super().rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper,
                                          n_decay=n_decay, scale=scale, skip=skip, step_table=step_table)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            return params
        return launch.rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper, n_decay=int(n_decay),
                                     scale=flags[0], skip=flags[1], **table)


class PinnedBatchUploader:
    """Batches made on the host, copied to the device while the step before runs.

    Two slots, each a set of page-locked host buffers and device buffers per batch shape.
    A batch is written into its slot's host buffers, copied on a stream of its own, and the
    step's stream waits for that copy (an event) before the step; the slot is written again
    two batches later, after the copy stream has waited for the step that read its device
    buffers (a second event). So the copy of batch k+1 overlaps the step of batch k, and the
    host waits only where it is about to overwrite a host buffer whose copy is still in
    flight (an event synchronisation, not a device synchronisation). Nothing is allocated
    once each shape has been seen in both slots. The protocol is ``HostBatchBuffers``'.
    """

    SLOTS = 2

    def __init__(self):
        import cupyx
        self._empty_pinned = cupyx.empty_pinned
        self.copy_stream = cupy.cuda.Stream(non_blocking=True)
        self._slots = [{"buffers": {}, "copied": cupy.cuda.Event(disable_timing=True),
                        "consumed": cupy.cuda.Event(disable_timing=True), "copying": False, "in_use": False}
                       for _ in range(self.SLOTS)]
        self._next = 0
        self._current = None

    def host_buffers(self, specs):
        slot = self._slots[self._next]
        if slot["copying"]:
            slot["copied"].synchronize()     # its host buffers are still being read by the last copy
            slot["copying"] = False
        specs = tuple((tuple(shape), np.dtype(dtype)) for shape, dtype in specs)
        buffers = slot["buffers"].get(specs)
        if buffers is None:
            buffers = slot["buffers"][specs] = [(self._empty_pinned(shape, dtype), cupy.empty(shape, dtype))
                                                for shape, dtype in specs]
        self._current = (slot, buffers)
        return [host for host, _ in buffers]

    def upload(self):
        slot, buffers = self._current
        if slot["in_use"]:
            self.copy_stream.wait_event(slot["consumed"])   # the step that read these device buffers is done
        for host, device in buffers:
            device.set(host, stream=self.copy_stream)
        slot["copied"].record(self.copy_stream)
        slot["copying"] = True
        cupy.cuda.get_current_stream().wait_event(slot["copied"])
        return [device for _, device in buffers]

    def release(self):
        slot, _ = self._current
        slot["consumed"].record(cupy.cuda.get_current_stream())
        slot["in_use"] = True
        self._current = None
        self._next = (self._next + 1) % self.SLOTS
