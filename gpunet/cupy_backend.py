"""The GPU backend: the NumPy reference ops on CuPy arrays, with the fusable ones replaced by
the CUDA kernels of ``kernels/*.cu`` (launched through ``gpunet.cuda``).

``CupyBackend`` overrides only ``bias_act``, ``act_backward``, ``bias_grad``,
``softmax_xent``, ``softmax``, ``mse_grad``, ``sumsq``, ``sgd_update``, ``adam_update`` and
``rmsprop_update`` (plus the array
plumbing and the GEMM precision switch). Anything a kernel does not cover (float16,
non-contiguous views, softmax outputs under MSE, one-hot or soft targets, a custom
activation) falls back to ``super()``, i.e. the reference math run by CuPy.

Nothing here reads a value back to the host: losses come back as 0-d device arrays, and the
clipping scale and the skip flag of the optimizer stay on the device. All launches go to
the current stream; the small scratch buffers below are reused from call to call, which is
safe because work on one stream runs in order.
"""
from __future__ import annotations

import os

import cupy
import numpy as np

from . import cuda
from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from .backend import NumpyBackend

__all__ = ["CupyBackend", "parity_check"]

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# exact classes only: a subclass may change the math behind the same kind id
_KERNEL_ACTIVATIONS = {Identity: 0, Sigmoid: 1, Tanh: 2, ReLU: 3, LeakyReLU: 4}


def _kernel_kind(act) -> int | None:
    """The kernels' activation id for ``act``, or None when only the reference covers it."""
    kind = _KERNEL_ACTIVATIONS.get(type(act))
    return kind if kind is not None and kind == getattr(act, "kind", None) else None


def _fusable(*arrays) -> bool:
    """All CuPy, C-contiguous, of one dtype that the kernels are instantiated for."""
    first = arrays[0]
    if not isinstance(first, cupy.ndarray) or first.dtype not in _KERNEL_DTYPES:
        return False
    for arr in arrays:
        if not isinstance(arr, cupy.ndarray) or arr.dtype != first.dtype or not arr.flags.c_contiguous:
            return False
    return True


def _host_number(value) -> bool:
    """A number already on the host (so turning it into a kernel argument costs no sync)."""
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return isinstance(value, (int, float, np.number))


def _data_ptr(a) -> int:
    return a.data.ptr


def _same_or_disjoint(a, b) -> bool:
    """True when a and b are the very same buffer (aliasing a kernel allows) or do not overlap."""
    if _data_ptr(a) == _data_ptr(b) and a.shape == b.shape and a.strides == b.strides:
        return True
    return not cupy.may_share_memory(a, b)


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

    def __init__(self, allow_tf32: bool | None = None):
        if allow_tf32 is None:
            allow_tf32 = os.environ.get("GPUNET_ALLOW_TF32", "").strip().lower() in ("1", "true", "yes", "on")
        if not isinstance(allow_tf32, bool):
            raise TypeError(f"allow_tf32 must be a bool, got {type(allow_tf32).__name__}")
        self.allow_tf32 = allow_tf32
        self._buffers: dict = {}     # (tag, device) -> float64 scratch, grown as needed
        self._constants: dict = {}   # (value, dtype, device) -> 0-d device array

    # ---- arrays -------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else np.asarray(x)

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    def _scratch(self, tag: str, n: int):
        """A float64 device buffer of at least n entries, reused across calls (one per tag)."""
        key = (tag, cupy.cuda.runtime.getDevice())
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < n:
            buf = cupy.empty(max(n, 1), dtype=np.float64)
            self._buffers[key] = buf
        return buf[:n]

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
        kind = _kernel_kind(act)
        if kind is None or not _fusable(z, b) or z.ndim != 2 or b.shape != (z.shape[1],):
            return super().bias_act(z, b, act)
        p0, p1 = act.kernel_params
        return cuda.bias_act(z, b, kind, p0, p1)

    def act_backward(self, grad, a, act):
        kind = _kernel_kind(act)
        if kind is None or not _fusable(grad, a) or grad.shape != a.shape or not _same_or_disjoint(grad, a):
            return super().act_backward(grad, a, act)
        p0, p1 = act.kernel_params
        return cuda.act_backward(grad, a, kind, p0, p1)

    def bias_grad(self, delta, out=None):
        if not _fusable(delta) or delta.ndim != 2:
            return super().bias_grad(delta, out=out)
        cols = delta.shape[1]
        if out is None:
            out = cupy.empty(cols, dtype=delta.dtype)
        elif not _fusable(delta, out) or out.shape != (cols,) or cupy.may_share_memory(out, delta):
            return super().bias_grad(delta, out=out)
        chunks, _ = cuda.column_sums_chunks(*delta.shape)
        partial = self._scratch("column_sums", max(1, chunks * cols))   # unused with one chunk
        return cuda.column_sums(delta, out, partial)

    # ---- losses at the output -----------------------------------------------------
    def softmax(self, z, out=None):
        if out is None and _fusable(z):
            out = cupy.empty_like(z)
        if not _fusable(z, out) or z.ndim != 2 or out.shape != z.shape or not _same_or_disjoint(z, out) \
                or z.size == 0:
            return super().softmax(z, out=out)
        return cuda.softmax(z, out)

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
        loss = cuda.softmax_xent(logits, labels, grad_out, row_loss, loss)
        if row_scale is None:
            return loss
        # weighted examples: the kernel's per-row losses and gradient rows, scaled after it
        grad_out *= row_scale[:, None]
        return (row_loss @ row_scale.astype(np.float64) / rows).astype(logits.dtype)

    def mse_grad(self, a, targets, act, grad_out, row_scale=None):
        kind = _kernel_kind(act)
        if (kind is None or not _fusable(a, targets, grad_out) or a.ndim != 2 or a.size == 0
                or targets.shape != a.shape or grad_out.shape != a.shape or row_scale is not None
                or not _same_or_disjoint(a, grad_out) or cupy.may_share_memory(targets, grad_out)):
            # weighted examples take the reference chain (the kernel sums over all elements)
            return super().mse_grad(a, targets, act, grad_out, row_scale)
        p0, p1 = act.kernel_params
        block_sums = self._scratch("block_sums", cuda.reduction_grid(a.size))
        loss = cupy.empty((), dtype=a.dtype)
        return cuda.mse_grad(a, targets, kind, p0, p1, grad_out, block_sums, loss)

    # ---- optimizer ----------------------------------------------------------------
    def sumsq(self, x):
        if not _fusable(x):
            return super().sumsq(x)
        block_sums = self._scratch("block_sums", cuda.reduction_grid(x.size))
        return cuda.sumsq(x, block_sums, cupy.empty((), dtype=x.dtype))

    def sgd_update(self, params, grads, velocity, *, lr, momentum, nesterov,
                   weight_decay, n_decay, scale, skip):
        arrays = (params, grads) if not momentum else (params, grads, velocity)
        if (not _fusable(*arrays) or params.ndim != 1 or grads.shape != params.shape
                or (momentum and velocity.shape != params.shape)
                or not all(_host_number(v) for v in (lr, momentum, weight_decay, n_decay))):
            return super().sgd_update(params, grads, velocity, lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, n_decay=n_decay, scale=scale, skip=skip)
        device_flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if device_flags is None:      # a true host flag: nothing to launch
            return params
        scale, skip = device_flags
        return cuda.sgd_update(params, grads, velocity, lr=float(lr), momentum=float(momentum),
                               nesterov=bool(nesterov), weight_decay=float(weight_decay),
                               n_decay=int(n_decay), scale=scale, skip=skip)

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

    def adam_update(self, params, grads, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, step,
                    weight_decay, decoupled_weight_decay, n_decay, scale, skip):
        hyper = (lr, beta1, beta2, eps, step, weight_decay, decoupled_weight_decay, n_decay)
        if (not _fusable(params, grads, exp_avg, exp_avg_sq) or params.ndim != 1
                or any(a.shape != params.shape for a in (grads, exp_avg, exp_avg_sq))
                or not all(_host_number(v) for v in hyper)):
            return super().adam_update(params, grads, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                                       eps=eps, step=step, weight_decay=weight_decay,
                                       decoupled_weight_decay=decoupled_weight_decay, n_decay=n_decay,
                                       scale=scale, skip=skip)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            return params
        return cuda.adam_update(params, grads, exp_avg, exp_avg_sq, lr=float(lr), beta1=float(beta1),
                                beta2=float(beta2), eps=float(eps), step=int(step),
                                weight_decay=float(weight_decay),
                                decoupled_weight_decay=float(decoupled_weight_decay), n_decay=int(n_decay),
                                scale=flags[0], skip=flags[1])

    def rmsprop_update(self, params, grads, square_avg, grad_avg, momentum_buf, *, lr, alpha, eps,
                       momentum, centered, weight_decay, n_decay, scale, skip):
        arrays = [params, grads, square_avg] + ([grad_avg] if centered else []) \
            + ([momentum_buf] if momentum else [])
        hyper = (lr, alpha, eps, momentum, weight_decay, n_decay)
        if (not _fusable(*arrays) or params.ndim != 1 or any(a.shape != params.shape for a in arrays)
                or not all(_host_number(v) for v in hyper)):
            return super().rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, lr=lr, alpha=alpha,
                                          eps=eps, momentum=momentum, centered=centered,
                                          weight_decay=weight_decay, n_decay=n_decay, scale=scale, skip=skip)
        flags = self._device_scale_and_skip(scale, skip, params.dtype)
        if flags is None:
            return params
        return cuda.rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, lr=float(lr),
                                   alpha=float(alpha), eps=float(eps), momentum=float(momentum),
                                   centered=bool(centered), weight_decay=float(weight_decay),
                                   n_decay=int(n_decay), scale=flags[0], skip=flags[1])


# ---------------------------------------------------------------------------------
# quick parity check against the reference (for ``gpunet info``)
def parity_check(seed: int = 0) -> list[dict]:
    """Run each fused op once per dtype on small random data (shapes that exercise both row
    kernels and a multi-chunk column sum) and compare with ``NumpyBackend``.

    Returns ``[{"op", "dtype", "max_error", "tolerance", "ok"}]``; ``max_error`` is the largest
    absolute difference divided by max(1, largest reference magnitude).
    """
    rng = np.random.default_rng(seed)
    ref, gpu = NumpyBackend(), CupyBackend(allow_tf32=False)
    rows = []

    def record(op, dtype, got, want):
        got = np.asarray(cupy.asnumpy(got), dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
        tol = 1e-5 if dtype == np.float32 else 1e-12
        rows.append({"op": op, "dtype": np.dtype(dtype).name, "max_error": err, "tolerance": tol,
                     "ok": bool(err <= tol)})

    acts = [Identity(), Sigmoid(), Sigmoid(c=2.0, beta=0.5), Tanh(), ReLU(), LeakyReLU(0.1)]
    for dtype in (np.float32, np.float64):
        z = rng.normal(scale=3.0, size=(67, 131)).astype(dtype)
        b = rng.normal(size=131).astype(dtype)
        g = rng.normal(size=z.shape).astype(dtype)
        for act in acts:
            record(f"bias_act[{act!r}]", dtype, gpu.bias_act(cupy.asarray(z), cupy.asarray(b), act),
                   ref.bias_act(z.copy(), b, act))
            a = ref.bias_act(z.copy(), b, act)
            record(f"act_backward[{act!r}]", dtype, gpu.act_backward(cupy.asarray(g), cupy.asarray(a), act),
                   ref.act_backward(g.copy(), a, act))
        # a warp per row, then both kernels for long rows (shared memory, registers)
        for cols, variant in ((10, None), (3000, "shared"), (3000, "registers")):
            logits = rng.normal(scale=5.0, size=(53, cols)).astype(dtype)
            labels = rng.integers(0, cols, size=53)
            grad_ref = np.empty_like(logits)
            loss_ref = ref.softmax_xent(logits, labels, grad_ref)
            label = f"53x{cols}" + (f" {variant}" if variant else "")
            with cuda.long_rows(variant or "shared"):
                grad_gpu = cupy.empty(logits.shape, dtype=dtype)
                loss_gpu = gpu.softmax_xent(cupy.asarray(logits), cupy.asarray(labels), grad_gpu)
                probs_gpu = gpu.softmax(cupy.asarray(logits))
            record(f"softmax_xent loss [{label}]", dtype, loss_gpu, loss_ref)
            record(f"softmax_xent grad [{label}]", dtype, grad_gpu, grad_ref)
            record(f"softmax [{label}]", dtype, probs_gpu, ref.softmax(logits))
        a = rng.uniform(0.05, 0.95, size=(61, 7)).astype(dtype)
        y = rng.normal(size=a.shape).astype(dtype)
        for act in (Identity(), Sigmoid(), Tanh()):
            grad_ref = np.empty_like(a)
            loss_ref = ref.mse_grad(a, y, act, grad_ref)
            grad_gpu = cupy.empty(a.shape, dtype=dtype)
            loss_gpu = gpu.mse_grad(cupy.asarray(a), cupy.asarray(y), act, grad_gpu)
            record(f"mse_grad loss [{act!r}]", dtype, loss_gpu, loss_ref)
            record(f"mse_grad grad [{act!r}]", dtype, grad_gpu, grad_ref)
        delta = rng.normal(size=(1000, 37)).astype(dtype)
        # the reductions accumulate in double: judged against the reference run in float64
        record("bias_grad [1000x37]", dtype, gpu.bias_grad(cupy.asarray(delta)),
               ref.bias_grad(delta.astype(np.float64)))
        x = rng.normal(size=100_003).astype(dtype)
        record("sumsq [100003]", dtype, gpu.sumsq(cupy.asarray(x)), ref.sumsq(x.astype(np.float64)))
        p = rng.normal(size=1001).astype(dtype)
        gr = rng.normal(size=1001).astype(dtype)
        v = rng.normal(size=1001).astype(dtype)
        p_ref, v_ref = p.copy(), v.copy()
        ref.sgd_update(p_ref, gr, v_ref, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, n_decay=700,
                       scale=dtype(0.5), skip=False)
        p_gpu, v_gpu = cupy.asarray(p), cupy.asarray(v)
        gpu.sgd_update(p_gpu, cupy.asarray(gr), v_gpu, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2,
                       n_decay=700, scale=cupy.full((), 0.5, dtype=dtype), skip=cupy.zeros((), dtype=bool))
        record("sgd_update params", dtype, p_gpu, p_ref)
        record("sgd_update velocity", dtype, v_gpu, v_ref)
        m, s = np.abs(rng.normal(size=1001)).astype(dtype), np.abs(rng.normal(size=1001)).astype(dtype)
        p_ref, m_ref, s_ref = p.copy(), m.copy(), s.copy()
        ref.adam_update(p_ref, gr, m_ref, s_ref, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=3,
                        weight_decay=1e-3, decoupled_weight_decay=1e-2, n_decay=700, scale=dtype(0.5), skip=False)
        p_gpu, m_gpu, s_gpu = cupy.asarray(p), cupy.asarray(m), cupy.asarray(s)
        gpu.adam_update(p_gpu, cupy.asarray(gr), m_gpu, s_gpu, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=3,
                        weight_decay=1e-3, decoupled_weight_decay=1e-2, n_decay=700,
                        scale=cupy.full((), 0.5, dtype=dtype), skip=cupy.zeros((), dtype=bool))
        record("adam_update params", dtype, p_gpu, p_ref)
        record("adam_update exp_avg_sq", dtype, s_gpu, s_ref)
        p_ref, s_ref, m_ref, v_ref = p.copy(), s.copy(), m.copy(), v.copy()
        ref.rmsprop_update(p_ref, gr, s_ref, m_ref, v_ref, lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.9,
                           centered=True, weight_decay=1e-3, n_decay=700, scale=dtype(0.5), skip=False)
        p_gpu, s_gpu, m_gpu, v_gpu = cupy.asarray(p), cupy.asarray(s), cupy.asarray(m), cupy.asarray(v)
        gpu.rmsprop_update(p_gpu, cupy.asarray(gr), s_gpu, m_gpu, v_gpu, lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.9,
                           centered=True, weight_decay=1e-3, n_decay=700, scale=cupy.full((), 0.5, dtype=dtype),
                           skip=cupy.zeros((), dtype=bool))
        record("rmsprop_update params", dtype, p_gpu, p_ref)
        record("rmsprop_update momentum", dtype, v_gpu, v_ref)
    return rows
