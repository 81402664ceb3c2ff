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
           "sgd_update", "adam_update", "rmsprop_update"]


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


def _sum_to_scalar(values, n: int, divisor: float, out):
    """``out[()] = sum(values[:n]) / divisor`` by one block in a fixed order; values float64."""
    fn = sources.get_kernel("reduce", f"sum_to_scalar_{_suffix(out.dtype)}")
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
    rows_layout = layout.row_layout(rows, cols, logits.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_xent_{rows_layout.kernel}_{_suffix(logits.dtype)}", rows_layout,
                 (logits, labels, np.int64(rows), np.int64(cols), np.int32(rows_layout.mode), grad, row_loss))
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
    rows_layout = layout.row_layout(rows, cols, z.dtype.itemsize)
    _launch_rows("softmax_xent", f"softmax_{rows_layout.kernel}_{_suffix(z.dtype)}", rows_layout,
                 (z, np.int64(rows), np.int64(cols), np.int32(rows_layout.mode), out))
    return out


def _check_loss_operands(kernel, what, z, targets, grad, block_sums, loss_out) -> int:
    """The operands an element-wise loss kernel shares (``z`` is named ``what``): z, targets,
    grad (N, K) of one float dtype, float64 block_sums for the grid, a 0-d loss_out. Returns
    the reduction grid."""
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
    return grid


def mse_grad(a, targets, kind: int, p0: float, p1: float, grad, block_sums, loss_out):
    """MSE loss and its gradient at the output pre-activation.

    a, targets, grad (N, K) of one float dtype (grad may be a); block_sums float64 scratch
    with ``reduction_grid(N*K)`` entries; loss_out 0-d receives ``1/(2N) sum (a - y)^2``.
    grad receives ``((a - y) / N) * f'(a)``. Two launches.
    """
    if kind not in _KERNEL_IDS:
        raise ValueError(f"no mse_grad kernel for activation kind {kind}")
    grid = _check_loss_operands("mse_grad", "a", a, targets, grad, block_sums, loss_out)
    rows, cols = a.shape
    fn = sources.get_kernel("mse", f"mse_grad_{_suffix(a.dtype)}")
    fn((grid,), (BLOCK,), (a, targets, np.int64(rows), np.int64(cols), np.int32(kind),
                           _scalar(a.dtype, p0), _scalar(a.dtype, p1), grad, block_sums))
    return _sum_to_scalar(block_sums, grid, 2.0 * rows, loss_out)


CANONICAL_LOSSES = ("sigmoid_bce", "poisson_exp")


def canonical_loss(name, logits, targets, row_scale, grad, block_sums, loss_out):
    """A loss with its canonical link, fused with its gradient (kernels/canonical_losses.cu):
    ``name`` "sigmoid_bce" or "poisson_exp". logits, targets, grad (N, K) of one float dtype
    (grad may be logits); row_scale (N,) of that dtype or None; block_sums float64 scratch with
    ``reduction_grid(N*K)`` entries; loss_out 0-d receives the mean over N of the row sums.
    grad receives ``(f(z) - y) / N`` (times row_scale). Two launches."""
    if name not in CANONICAL_LOSSES:
        raise ValueError(f"no canonical-loss kernel {name!r}; choose from {', '.join(CANONICAL_LOSSES)}")
    grid = _check_loss_operands(name, "logits", logits, targets, grad, block_sums, loss_out)
    rows, cols = logits.shape
    if row_scale is not None:
        _check("row_scale", row_scale, dtype=logits.dtype, ndim=1)
        if row_scale.shape[0] != rows:
            raise ValueError(f"row_scale has {row_scale.shape[0]} entries for {rows} rows")
    fn = sources.get_kernel("canonical_losses", f"{name}_{_suffix(logits.dtype)}")
    fn((grid,), (BLOCK,), (logits, targets, grad if row_scale is None else row_scale, np.int32(row_scale is not None),
                           np.int64(rows), np.int64(cols), grad, block_sums))
    return _sum_to_scalar(block_sums, grid, float(rows), loss_out)


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
    fn = sources.get_kernel("reduce", f"sumsq_partial_{suffix}")
    fn((grid,), (BLOCK,), (x, np.int64(x.size), block_sums))
    return _sum_to_scalar(block_sums, grid, 1.0, out)


# The optimizer launchers take the update's hyper-parameters as one frozen value
# (gpunet.optim's SGDHyper, AdamHyper, RMSpropHyper), already checked there.
def sgd_update(params, grads, velocity, hyper, *, n_decay, scale, skip):
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
        t(hyper.weight_decay), np.int32(hyper.nesterov), scale, skip))
    return params


def adam_update(params, grads, exp_avg, exp_avg_sq, hyper, *, step, n_decay, scale, skip):
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
    lr, beta1, beta2 = hyper.lr, hyper.beta1, hyper.beta2
    bias_correction1 = 1.0 - beta1 ** int(step)
    bias_correction2 = 1.0 - beta2 ** int(step)
    decoupled = hyper.decoupled_weight_decay
    t = params.dtype.type
    fn = sources.get_kernel("optim", f"adam_update_{_suffix(params.dtype)}")
    fn((grid_1d(params.size),), (BLOCK,),
       (params, grads, exp_avg, exp_avg_sq, np.int64(params.size), np.int64(n_decay), t(lr / bias_correction1),
        t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(math.sqrt(bias_correction2)), t(hyper.eps),
        t(hyper.weight_decay), t(1.0 - lr * decoupled), np.int32(decoupled != 0.0), scale, skip))
    return params


def rmsprop_update(params, grads, square_avg, grad_avg, momentum_buf, hyper, *, n_decay, scale, skip):
    """One RMSprop step over the flat buffer in one launch (see kernels/optim.cu).

    params, grads, square_avg (P,) of one float dtype; grad_avg (P,) when ``centered`` and
    momentum_buf (P,) when ``momentum`` != 0, else None; scale a 0-d device array of the
    dtype; skip a 0-d device bool array.
    """
    _check("params", params, ndim=1)
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
        np.int32(hyper.centered), scale, skip))
    return params
