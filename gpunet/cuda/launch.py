"""One thin launcher per kernel of ``kernels/*.cu``.

A launcher checks dtypes, shapes and C-contiguity (raising ``TypeError``/``ValueError``: the
backend decides about fallbacks before calling), casts every scalar to the C type of the
kernel's parameter, picks the float or double instance, takes the launch layout from
``gpunet.cuda.layout`` and launches on the current stream. None of them reads anything back
from the device. Kernels are looked up through ``sources.get_kernel`` (compiled on first use).
"""
from __future__ import annotations

import math

import numpy as np

from ..activations import KERNEL_ACTIVATIONS
from . import layout, sources
from .layout import BLOCK, RowLayout, grid_1d, reduction_grid

__all__ = ["bias_act", "act_backward", "softmax_xent", "softmax", "mse_grad", "canonical_loss", "column_sums", "sumsq",
           "sgd_update", "adam_update", "rmsprop_update", "act_backward_colsum", "gather_rows", "finish_step", "squared_error_sums",
           "FINISH_SINGLE_BLOCK_MAX", "gemm", "GEMM_TILE", "advance_step", "STEP_TABLE_WIDTH"]


# ---- launch helpers -----------------------------------------------------------------------
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_KERNEL_IDS = tuple(KERNEL_ACTIVATIONS)   # the element-wise activation ids of the kernels


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


_smem_granted: dict = {}


def _launch_rows(topic: str, name: str, rows_layout: RowLayout, args):
    fn = sources.get_kernel(topic, name)
    if rows_layout.shared_mem > 48 * 1024:   # past the default limit a kernel must opt in
        import cupy
        key = (name, cupy.cuda.runtime.getDevice())
        if _smem_granted.get(key, 0) < rows_layout.shared_mem:
            fn.max_dynamic_shared_size_bytes = rows_layout.shared_mem
            _smem_granted[key] = rows_layout.shared_mem
    fn((rows_layout.grid,), (rows_layout.block,), args, shared_mem=rows_layout.shared_mem)


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
    if kind not in _KERNEL_IDS:
        raise ValueError(f"no bias_act kernel for activation kind {kind}")
    if z.size == 0:
        return z
    fn = sources.get_kernel("activations", f"bias_act_{_suffix(z.dtype)}")
    fn((grid_1d(z.size),), (BLOCK,), (z, b, np.int64(rows), np.int64(cols), np.int32(kind),
                                      _scalar(z.dtype, p0), _scalar(z.dtype, p1)))
    return z


def act_backward(grad, a, kind: int, p0: float = 0.0, p1: float = 0.0):
    """``grad <- grad * f'(a)`` in place; grad and a of one shape and float dtype (may alias)."""
    _check("grad", grad)
    _check("a", a, dtype=grad.dtype)
    if a.shape != grad.shape:
        raise ValueError(f"grad {grad.shape} and a {a.shape} differ in shape")
    if kind not in _KERNEL_IDS:
        raise ValueError(f"no act_backward kernel for activation kind {kind}")
    if kind == 0 or grad.size == 0:   # identity: f' = 1, nothing to do
        return grad
    fn = sources.get_kernel("activations", f"act_backward_{_suffix(grad.dtype)}")
    fn((grid_1d(grad.size),), (BLOCK,), (grad, a, np.int64(grad.size), np.int32(kind),
                                         _scalar(grad.dtype, p0), _scalar(grad.dtype, p1)))
    return grad


def act_backward_colsum(grad, a, kind: int, p0: float, p1: float, out, partial):
    """``grad <- grad * f'(a)`` in place and its column sums into out (n,): a hidden layer's
    delta and bias gradient in one launch (two past ``layout.COLUMN_SUMS_ONE_PASS_MAX``
    elements). ``partial``: float64 scratch of ``chunks * n`` entries (``column_sums_chunks``;
    one entry, never written, with one chunk).
    grad and a (N, n) of one float dtype (may alias)."""
    _check("grad", grad, ndim=2)
    _check("a", a, dtype=grad.dtype, ndim=2)
    _check("out", out, dtype=grad.dtype, ndim=1)
    rows, cols = grad.shape
    if a.shape != grad.shape or out.shape[0] != cols:
        raise ValueError(f"shapes disagree: grad {grad.shape}, a {a.shape}, out {out.shape}")
    if kind not in _KERNEL_IDS:
        raise ValueError(f"no act_backward kernel for activation kind {kind}")
    if cols == 0:
        return grad
    if rows == 0:
        out.fill(0)
        return grad
    chunks, rows_per_chunk = layout.column_sums_chunks(rows, cols)
    suffix = _suffix(grad.dtype)
    _check("partial", partial, dtype=np.float64, ndim=1)
    if partial.shape[0] < (chunks * cols if chunks > 1 else 1):
        raise ValueError(f"partial needs {chunks * cols} entries, has {partial.shape[0]}")
    fn = sources.get_kernel("activations", f"act_backward_colsum_{suffix}")
    fn((min(-(-cols // 32), 65535), chunks), (32, 8),
       (grad, a, np.int64(rows), np.int64(cols), np.int64(rows_per_chunk), np.int32(kind),
        _scalar(grad.dtype, p0), _scalar(grad.dtype, p1), partial, out))
    if chunks > 1:
        finish = sources.get_kernel("reduce", f"column_sums_finish_{suffix}")
        finish((grid_1d(cols),), (BLOCK,), (partial, np.int64(chunks), np.int64(cols), out))
    return grad


def _check_arrivals(arrivals):
    """The zeroed uint32 counter a one-launch reduction's blocks take tickets from (the last
    block resets it): the caller's own, used by no other launch in flight."""
    _check("arrivals", arrivals, dtype=np.uint32, ndim=1)
    if arrivals.shape[0] < 1:
        raise ValueError("arrivals needs one entry")


def softmax_xent(logits, labels, grad, row_loss, loss_out, arrivals, *, bias=None, row_scale=None, hits=None):
    """Fused softmax + cross-entropy + gradient from integer labels.

    logits (N, C) float; labels (N,) int64; grad (N, C) receives
    ``((softmax - e(y)) / N) * row_scale`` (may be ``logits`` itself); row_loss (N,) float64
    scratch receives per-row losses (times row_scale); loss_out a 0-d array of the logits'
    dtype receives the mean loss (``arrivals``: see ``_check_arrivals``). ``bias`` (C,): the
    logits' bias, added here and written back into logits; ``row_scale`` (N,) of the dtype;
    ``hits`` (N,) uint8 receives 1 where the row's argmax is its label. One launch.
    """
    _check("logits", logits, ndim=2)
    _check("labels", labels, dtype=np.int64, ndim=1)
    _check("grad", grad, dtype=logits.dtype, ndim=2)
    _check("row_loss", row_loss, dtype=np.float64, ndim=1)
    _check("loss_out", loss_out, dtype=logits.dtype, ndim=0)
    _check_arrivals(arrivals)
    rows, cols = logits.shape
    if grad.shape != logits.shape or labels.shape[0] != rows or row_loss.shape[0] != rows:
        raise ValueError(f"shapes disagree: logits {logits.shape}, labels {labels.shape}, "
                         f"grad {grad.shape}, row_loss {row_loss.shape}")
    if rows == 0 or cols == 0:
        raise ValueError("softmax_xent needs at least one row and one column")
    for name, arr, size, dtype in (("bias", bias, cols, logits.dtype), ("row_scale", row_scale, rows, logits.dtype),
                                   ("hits", hits, rows, np.uint8)):
        if arr is not None:
            _check(name, arr, dtype=dtype, ndim=1)
            if arr.shape[0] != size:
                raise ValueError(f"{name} has {arr.shape[0]} entries, needs {size}")
    rows_layout = layout.row_layout(rows, cols, logits.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_xent_{rows_layout.kernel}_{_suffix(logits.dtype)}", rows_layout,
                 (logits, logits if bias is None else bias, np.int32(bias is not None), labels,
                  logits if row_scale is None else row_scale, np.int32(row_scale is not None),
                  np.int64(rows), np.int64(cols), grad, row_loss,
                  row_loss.view(np.uint8) if hits is None else hits, np.int32(hits is not None), loss_out, arrivals,
                  np.int32(rows_layout.mode)))
    return loss_out


def softmax(z, out):
    """Row-wise softmax of z (N, C) into out (same shape and dtype; may be z)."""
    _check("z", z, ndim=2)
    _check("out", out, dtype=z.dtype, ndim=2)
    if out.shape != z.shape:
        raise ValueError(f"out {out.shape} and z {z.shape} differ in shape")
    rows, cols = z.shape
    if z.size == 0:
        return out
    rows_layout = layout.row_layout(rows, cols, z.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_{rows_layout.kernel}_{_suffix(z.dtype)}", rows_layout,
                 (z, np.int64(rows), np.int64(cols), np.int32(rows_layout.mode), out))
    return out


def _check_loss_operands(kernel, what, z, targets, grad, block_sums, loss_out, arrivals, row_scale, bias) -> int:
    """The operands an element-wise loss kernel shares (``z`` is named ``what``): z, targets,
    grad (N, K) of one float dtype, float64 block_sums for the grid, a 0-d loss_out, the
    arrivals counter, and row_scale (N,) and bias (K,) of the dtype or None. Returns the
    reduction grid."""
    _check(what, z, ndim=2)
    _check("targets", targets, dtype=z.dtype, ndim=2)
    _check("grad", grad, dtype=z.dtype, ndim=2)
    _check("block_sums", block_sums, dtype=np.float64, ndim=1)
    _check("loss_out", loss_out, dtype=z.dtype, ndim=0)
    if targets.shape != z.shape or grad.shape != z.shape:
        raise ValueError(f"shapes disagree: {what} {z.shape}, targets {targets.shape}, grad {grad.shape}")
    if z.size == 0:
        raise ValueError(f"{kernel} needs at least one element")
    grid = reduction_grid(z.size)
    if block_sums.shape[0] < grid:
        raise ValueError(f"block_sums needs {grid} entries, has {block_sums.shape[0]}")
    _check_arrivals(arrivals)
    for name, arr, size in (("row_scale", row_scale, z.shape[0]), ("bias", bias, z.shape[1])):
        if arr is not None:
            _check(name, arr, dtype=z.dtype, ndim=1)
            if arr.shape[0] != size:
                raise ValueError(f"{name} has {arr.shape[0]} entries, needs {size}")
    return grid


def mse_grad(a, targets, kind: int, p0: float, p1: float, grad, block_sums, loss_out, arrivals, *,
             row_scale=None, bias=None):
    """MSE loss and its gradient at the output pre-activation, in one launch.

    a, targets, grad (N, K) of one float dtype (grad may be a); block_sums float64 scratch
    with ``reduction_grid(N*K)`` entries; loss_out 0-d receives ``1/(2N) sum r (a - y)^2``
    (r: ``row_scale`` (N,), or 1); grad receives ``((a - y) / N) * r * f'(a)``. With ``bias``
    (K,), a holds the output layer's ``A W`` and becomes ``f(A W + bias)`` first (in place).
    """
    if kind not in _KERNEL_IDS:
        raise ValueError(f"no mse_grad kernel for activation kind {kind}")
    grid = _check_loss_operands("mse_grad", "a", a, targets, grad, block_sums, loss_out, arrivals, row_scale, bias)
    rows, cols = a.shape
    fn = sources.get_kernel("mse", f"mse_grad_{_suffix(a.dtype)}")
    fn((grid,), (BLOCK,), (a, a if bias is None else bias, np.int32(bias is not None), targets,
                           a if row_scale is None else row_scale, np.int32(row_scale is not None),
                           np.int64(rows), np.int64(cols), np.int32(kind), _scalar(a.dtype, p0), _scalar(a.dtype, p1),
                           grad, block_sums, loss_out, arrivals))
    return loss_out


CANONICAL_LOSSES = ("sigmoid_bce", "poisson_exp")


def canonical_loss(name, logits, targets, row_scale, grad, block_sums, loss_out, arrivals, *, bias=None, hits=None):
    """A loss with its canonical link, fused with its gradient (kernels/canonical_losses.cu):
    ``name`` "sigmoid_bce" or "poisson_exp". logits, targets, grad (N, K) of one float dtype
    (grad may be logits); row_scale (N,) of that dtype or None; block_sums float64 scratch with
    ``reduction_grid(N*K)`` entries; loss_out 0-d receives the mean over N of the row sums.
    grad receives ``(f(z) - y) / N`` (times row_scale). ``bias`` (K,): the logits' bias, added
    here and written back; ``hits`` (N, K) uint8 receives whether ``z > 0`` agrees with
    ``y > 0.5``. One launch."""
    if name not in CANONICAL_LOSSES:
        raise ValueError(f"no canonical-loss kernel {name!r}; choose from {', '.join(CANONICAL_LOSSES)}")
    grid = _check_loss_operands(name, "logits", logits, targets, grad, block_sums, loss_out, arrivals, row_scale,
                                bias)
    rows, cols = logits.shape
    if hits is not None:
        _check("hits", hits, dtype=np.uint8, ndim=2)
        if hits.shape != logits.shape:
            raise ValueError(f"hits {hits.shape} and logits {logits.shape} differ in shape")
    fn = sources.get_kernel("canonical_losses", f"{name}_{_suffix(logits.dtype)}")
    fn((grid,), (BLOCK,), (logits, logits if bias is None else bias, np.int32(bias is not None), targets,
                           logits if row_scale is None else row_scale, np.int32(row_scale is not None),
                           np.int64(rows), np.int64(cols), grad, block_sums,
                           block_sums.view(np.uint8) if hits is None else hits, np.int32(hits is not None),
                           loss_out, arrivals))
    return loss_out


def column_sums(x, out, partial=None):
    """Column sums of x (N, n) into out (n,), deterministic. ``partial``: float64 scratch of
    at least ``chunks * n`` entries (``layout.column_sums_chunks``); may be None with one chunk."""
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
    chunks, rows_per_chunk = layout.column_sums_chunks(rows, cols)
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
    fn = sources.get_kernel("reduce", f"column_sums_{suffix}")
    fn((tiles, chunks), (32, 8), (x, np.int64(rows), np.int64(cols), np.int64(rows_per_chunk),
                                  partial, out))
    if chunks > 1:
        finish = sources.get_kernel("reduce", f"column_sums_finish_{suffix}")
        finish((grid_1d(cols),), (BLOCK,), (partial, np.int64(chunks), np.int64(cols), out))
    return out


def sumsq(x, block_sums, out, arrivals):
    """``out[()] = sum(x**2)`` over the C-contiguous x, deterministic, in one launch;
    block_sums float64 scratch with ``reduction_grid(x.size)`` entries."""
    _check("x", x)
    _check("block_sums", block_sums, dtype=np.float64, ndim=1)
    _check("out", out, dtype=x.dtype, ndim=0)
    _check_arrivals(arrivals)
    grid = reduction_grid(x.size)
    if block_sums.shape[0] < grid:
        raise ValueError(f"block_sums needs {grid} entries, has {block_sums.shape[0]}")
    fn = sources.get_kernel("reduce", f"sumsq_{_suffix(x.dtype)}")
    fn((grid,), (BLOCK,), (x, np.int64(x.size), block_sums, out, arrivals))
    return out


# The optimizer launchers take the update's hyper-parameters as one frozen value
# (gpunet.optim's SGDHyper, AdamHyper, RMSpropHyper), already checked there.
def sgd_update(params, grads, velocity, hyper, *, n_decay, scale, skip, step_table, step, use_table):
    """One SGD step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads (P,) and velocity (P,) or None (momentum == 0) of one float dtype; scale a
    0-d device array of that dtype; skip a 0-d device bool array. With ``use_table`` the
    learning rate is column 0 of row ``step`` (int64 0-d, on the device) of ``step_table``
    (n, STEP_TABLE_WIDTH) of the dtype; else those two are any such arrays, never read.
    """
    _check_step_table(step_table, step, params.dtype)
    _check("params", params, ndim=1)
    _check("grads", grads, dtype=params.dtype, ndim=1)
    _check("scale", scale, dtype=params.dtype, ndim=0)
    _check("skip", skip, dtype=np.bool_, ndim=0)
    if grads.shape != params.shape:
        raise ValueError(f"grads {grads.shape} and params {params.shape} differ in shape")
    if hyper.momentum:
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
    fn = sources.get_kernel("optim", f"sgd_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, velocity, np.int64(params.size), np.int64(n_decay), t(hyper.lr), t(hyper.momentum),
        t(hyper.weight_decay), np.int32(hyper.nesterov), scale, skip, step_table, step, np.int32(use_table)))
    return params


def adam_update(params, grads, exp_avg, exp_avg_sq, hyper, *, t, n_decay, scale, skip, skipped, count_skips,
                step_table, step, use_table):
    """One Adam/AdamW step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads, exp_avg, exp_avg_sq (P,) of one float dtype; scale a 0-d device array of
    that dtype; skip a 0-d device bool array; ``skipped`` a 0-d int64 device counter that a
    skipped step increments when ``count_skips``; ``t`` the 1-based step count. With
    ``use_table`` the step size, sqrt of the second bias correction and decay factor are
    columns 0-2 of row ``step`` of ``step_table`` (``AdamHyper.step_scalars``) instead. The bias
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
    _check("skipped", skipped, dtype=np.int64, ndim=0)
    _check_step_table(step_table, step, params.dtype)
    if int(t) < 1:
        raise ValueError(f"t counts from 1, got {t}")
    if params.size == 0:
        return params
    beta1, beta2, decoupled = hyper.beta1, hyper.beta2, hyper.decoupled_weight_decay
    step_size, sqrt_bias_correction2, decay_factor = hyper.step_scalars(int(t))
    c = params.dtype.type
    fn = sources.get_kernel("optim", f"adam_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, exp_avg, exp_avg_sq, np.int64(params.size), np.int64(n_decay), c(step_size),
        c(beta1), c(1.0 - beta1), c(beta2), c(1.0 - beta2), c(sqrt_bias_correction2), c(hyper.eps),
        c(hyper.weight_decay), c(decay_factor), np.int32(decoupled != 0.0), scale, skip,
        skipped, np.int32(count_skips), step_table, step, np.int32(use_table)))
    return params


def rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper, *, n_decay, scale, skip, step_table,
                   step, use_table):
    """One RMSprop step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads, square_avg (P,) of one float dtype; grad_avg (P,) when ``centered`` and
    momentum_buf (P,) when ``momentum`` != 0, else None; scale a 0-d device array of the
    dtype; skip a 0-d device bool array; ``step_table``, ``step``, ``use_table`` as for
    ``sgd_update`` (the learning rate in column 0).
    """
    _check("params", params, ndim=1)
    _check_step_table(step_table, step, params.dtype)
    buffers = [("grads", grads), ("square_avg", square_avg)]
    if hyper.centered:
        if grad_avg is None:
            raise ValueError("centered=True needs a grad_avg buffer")
        buffers.append(("grad_avg", grad_avg))
    else:
        grad_avg = params   # never touched when not centered
    if hyper.momentum:
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
    fn = sources.get_kernel("optim", f"rmsprop_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, square_avg, grad_avg, momentum_buf, np.int64(params.size), np.int64(n_decay), t(hyper.lr),
        t(hyper.alpha), t(1.0 - hyper.alpha), t(hyper.eps), t(hyper.momentum), t(hyper.weight_decay),
        np.int32(hyper.centered), scale, skip, step_table, step, np.int32(use_table)))
    return params


# ---- the bookkeeping of a fit step (kernels/step.cu) --------------------------------------
def _words(arr):
    """A C-contiguous array as the 32-bit words the gather copies, rows kept (no copy)."""
    if arr.itemsize % 4 or (arr.ndim > 1 and arr.shape[1] * arr.itemsize % 4):
        raise TypeError(f"gather_rows copies 32-bit words; dtype {arr.dtype} rows are not a whole number of them")
    return arr.reshape(arr.shape[0], -1).view(np.uint32)


def gather_rows(idx, srcs, outs, step, step_stride=0):
    """``outs[k][:] = srcs[k][idx[first:first + R]]`` for up to three row-major arrays
    (features, targets, weights) in one launch, ``first = step * step_stride`` read on the
    device from the int64 0-d ``step`` (a graph's step counter; 0 and stride 0 otherwise).
    idx int64; srcs[k] (S, ...) and outs[k] (R, ...) of one dtype and row shape, every row a
    whole number of 32-bit words. An index outside [0, S) fills its rows with all-one words
    (NaN features and weights, label -1)."""
    _check("idx", idx, dtype=np.int64, ndim=1)
    _check("step", step, dtype=np.int64, ndim=0)
    if not 1 <= len(srcs) == len(outs) <= 3:
        raise ValueError(f"gather_rows takes one to three source/out pairs, got {len(srcs)} and {len(outs)}")
    rows = outs[0].shape[0]
    if step_stride == 0 and idx.shape[0] != rows:
        raise ValueError(f"{idx.shape[0]} indices for {rows} rows")
    src_rows = srcs[0].shape[0]
    args = []
    for k, (src, out) in enumerate(zip(srcs, outs)):
        _check(f"srcs[{k}]", src)
        _check(f"outs[{k}]", out, dtype=src.dtype)
        if src.shape[0] != src_rows or out.shape != (rows, *src.shape[1:]):
            raise ValueError(f"gather_rows pair {k}: source {src.shape} and out {out.shape} do not fit "
                             f"{rows} rows gathered from {src_rows}")
        s, o = _words(src), _words(out)
        args += [s, o, np.int64(s.shape[1])]
    while len(args) < 9:     # absent pairs: zero words, never read
        args += [args[0], args[1], np.int64(0)]
    words = sum(int(a) for a in args[2::3])
    if rows == 0 or words == 0:
        return outs
    fn = sources.get_kernel("step", "gather_rows_u32")
    fn((grid_1d(rows * words),), (BLOCK,), (idx, step, np.int64(step_stride), np.int64(rows), np.int64(src_rows),
                                            *args))
    return outs


def advance_step(counter):
    """``counter += 1`` on the device (int64 0-d): a captured step's last launch."""
    _check("counter", counter, dtype=np.int64, ndim=0)
    sources.get_kernel("step", "advance_step_i64")((1,), (1,), (counter,))
    return counter


STEP_TABLE_WIDTH = 4     # GN_STEP_TABLE_WIDTH in kernels/optim.cu


def _check_step_table(step_table, step, dtype):
    _check("step_table", step_table, dtype=dtype, ndim=2)
    _check("step", step, dtype=np.int64, ndim=0)
    if step_table.shape[1] != STEP_TABLE_WIDTH:
        raise ValueError(f"step_table rows hold {STEP_TABLE_WIDTH} values, got shape {step_table.shape}")


# The finish reads the whole flat gradient in one block up to this many entries (no second
# launch); longer buffers get sumsq's multi-block first pass.
FINISH_SINGLE_BLOCK_MAX = 1 << 18


def finish_step(loss, grads, sums, bad, scale, *, batch_weight, clip_norm, hits=None, grad_parts=None):
    """After a step's loss and backward pass, in one launch (two for gradients longer than
    ``FINISH_SINGLE_BLOCK_MAX``): flag a non-finite loss or gradient in ``bad`` (0-d bool,
    only ever set), put the clipping factor in ``scale`` (0-d, the gradients' dtype; 1 when
    ``clip_norm`` is None), add ``loss * batch_weight`` to ``sums[0]`` (``batch_weight`` a
    number, or a 0-d device array of the loss's dtype: a weight sum never read back) and, with ``hits``
    (R, k) uint8, the number of rows whose bytes are all nonzero to ``sums[1]`` (float64).
    loss 0-d and grads (P,) of one float dtype; grad_parts float64 scratch of
    ``reduction_grid(P)`` entries when P is over the single-block limit."""
    _check("loss", loss, ndim=0)
    _check("grads", grads, dtype=loss.dtype, ndim=1)
    _check("sums", sums, dtype=np.float64, ndim=1)
    _check("bad", bad, dtype=np.bool_, ndim=0)
    _check("scale", scale, dtype=loss.dtype, ndim=0)
    if sums.shape[0] < 2:
        raise ValueError(f"sums needs 2 entries, has {sums.shape[0]}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    suffix = _suffix(loss.dtype)
    use_parts = grads.size > FINISH_SINGLE_BLOCK_MAX
    n_parts = 0
    if use_parts:
        n_parts = reduction_grid(grads.size)
        if grad_parts is None:
            raise ValueError(f"a gradient of {grads.size} entries needs a grad_parts buffer")
        _check("grad_parts", grad_parts, dtype=np.float64, ndim=1)
        if grad_parts.shape[0] < n_parts:
            raise ValueError(f"grad_parts needs {n_parts} entries, has {grad_parts.shape[0]}")
        first = sources.get_kernel("reduce", f"sumsq_partial_{suffix}")
        first((n_parts,), (BLOCK,), (grads, np.int64(grads.size), grad_parts))
    else:
        grad_parts = sums    # not read
    if hits is not None:
        _check("hits", hits, dtype=np.uint8, ndim=2)
        hit_rows, hit_cols = hits.shape
    else:
        hits, hit_rows, hit_cols = bad.reshape(1, 1).view(np.uint8), 0, 0   # not read
    count_hits = hit_rows > 0
    weight_total = batch_weight if isinstance(batch_weight, type(loss)) else None
    if weight_total is not None:
        _check("batch_weight", weight_total, dtype=loss.dtype, ndim=0)
        batch_weight = 0.0
    fn = sources.get_kernel("step", f"finish_step_{suffix}")
    fn((1,), (BLOCK,), (loss, grads, np.int64(grads.size), grad_parts, np.int64(n_parts), np.int32(use_parts),
                        hits, np.int64(hit_rows), np.int64(hit_cols), np.int32(count_hits), np.float64(batch_weight),
                        loss if weight_total is None else weight_total, np.int32(weight_total is not None),
                        np.float64(0.0 if clip_norm is None else clip_norm), sums, bad, scale))
    return sums


def squared_error_sums(out, targets, sums, *, exp_outputs=False):
    """``sums[c] += sum_r (pred(out[r, c]) - targets[r, c])**2`` (float64 accumulators), pred
    the identity or, with ``exp_outputs``, exp (a Poisson model's logits). One launch."""
    _check("out", out, ndim=2)
    _check("targets", targets, dtype=out.dtype, ndim=2)
    _check("sums", sums, dtype=np.float64, ndim=1)
    rows, cols = out.shape
    if targets.shape != out.shape or sums.shape[0] != cols:
        raise ValueError(f"shapes disagree: out {out.shape}, targets {targets.shape}, sums {sums.shape}")
    if out.size == 0:
        return sums
    fn = sources.get_kernel("step", f"squared_error_sums_{_suffix(out.dtype)}")
    fn((min(-(-cols // 32), 65535),), (32, 8), (out, targets, np.int64(rows), np.int64(cols),
                                                 np.int32(bool(exp_outputs)), sums))
    return sums


# ---- GEMM (kernels/gemm.cu) ---------------------------------------------------------------
GEMM_TILE = 64


def _stored(x, name):
    """(the C-contiguous array x is, or is the transpose of; whether it is transposed)."""
    import cupy
    if not isinstance(x, cupy.ndarray) or x.ndim != 2:
        raise TypeError(f"{name} must be a 2-D cupy.ndarray")
    if x.flags.c_contiguous:
        return x, False
    if x.T.flags.c_contiguous:
        return x.T, True
    raise ValueError(f"{name} must be C-contiguous or the transpose of a C-contiguous array")


def gemm(a, b, out):
    """``out = a @ b`` by gpunet's tiled kernel (one launch, capturable in a CUDA graph).
    a (M, K), b (K, N), out (M, N) of one float dtype; a and b C-contiguous or transposed
    views of C-contiguous arrays (not both transposed); out C-contiguous, not overlapping them."""
    a_stored, trans_a = _stored(a, "a")
    b_stored, trans_b = _stored(b, "b")
    _check("out", out, ndim=2)
    for name, arr in (("a", a_stored), ("b", b_stored)):
        if arr.dtype != out.dtype:
            raise TypeError(f"{name} has dtype {arr.dtype}, out {out.dtype}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or out.shape != (m, n):
        raise ValueError(f"shapes disagree: {a.shape} @ {b.shape} into {out.shape}")
    if trans_a and trans_b:
        raise ValueError("gemm takes at most one transposed operand")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    fn = sources.get_kernel("gemm", f"gemm_{_suffix(out.dtype)}")
    fn((-(-n // GEMM_TILE), -(-m // GEMM_TILE)), (16, 16),
       (a_stored, b_stored, out, np.int64(m), np.int64(n), np.int64(k), np.int32(trans_a), np.int32(trans_b)))
    return out
