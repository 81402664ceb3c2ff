"""Diagnostics of the GPU path for ``gpunet info``: each fused op checked against its twin.

``parity_check`` runs every fused CUDA op of ``CupyBackend`` once per dtype on small random
data and compares it with ``NumpyBackend``, the reference. Needs a usable GPU (CuPy).
"""
from __future__ import annotations

import cupy
import numpy as np

from .activations import KERNEL_ACTIVATIONS, Identity, LeakyReLU, Sigmoid, Tanh
from .cuda import layout
from .cupy_backend import CupyBackend
from .numpy_backend import NumpyBackend
from .optim import AdamHyper, RMSpropHyper, SGDHyper

__all__ = ["parity_check"]


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

    # every activation the kernels implement, and two with parameters off their defaults
    acts = [cls() for cls in KERNEL_ACTIVATIONS.values()] + [Sigmoid(c=2.0, beta=0.5), LeakyReLU(0.1)]
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
            with layout.long_rows(variant or "shared"):
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
        flags = {"n_decay": 700, "skip": False}
        half = {"ref": dtype(0.5), "gpu": cupy.full((), 0.5, dtype=dtype)}
        sgd = SGDHyper(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
        p_ref, v_ref = p.copy(), v.copy()
        ref.sgd_update(p_ref, gr, v_ref, sgd, scale=half["ref"], **flags)
        p_gpu, v_gpu = cupy.asarray(p), cupy.asarray(v)
        gpu.sgd_update(p_gpu, cupy.asarray(gr), v_gpu, sgd, scale=half["gpu"], **flags)
        record("sgd_update params", dtype, p_gpu, p_ref)
        record("sgd_update velocity", dtype, v_gpu, v_ref)
        m, s = np.abs(rng.normal(size=1001)).astype(dtype), np.abs(rng.normal(size=1001)).astype(dtype)
        adam = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-3, decoupled_weight_decay=1e-2)
        p_ref, m_ref, s_ref = p.copy(), m.copy(), s.copy()
        ref.adam_update(p_ref, gr, m_ref, s_ref, adam, step=3, scale=half["ref"], **flags)
        p_gpu, m_gpu, s_gpu = cupy.asarray(p), cupy.asarray(m), cupy.asarray(s)
        gpu.adam_update(p_gpu, cupy.asarray(gr), m_gpu, s_gpu, adam, step=3, scale=half["gpu"], **flags)
        record("adam_update params", dtype, p_gpu, p_ref)
        record("adam_update exp_avg_sq", dtype, s_gpu, s_ref)
        rmsprop = RMSpropHyper(lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.9, centered=True, weight_decay=1e-3)
        p_ref, s_ref, m_ref, v_ref = p.copy(), s.copy(), m.copy(), v.copy()
        ref.rmsprop_update(p_ref, gr, s_ref, m_ref, v_ref, rmsprop, scale=half["ref"], **flags)
        p_gpu, s_gpu, m_gpu, v_gpu = cupy.asarray(p), cupy.asarray(s), cupy.asarray(m), cupy.asarray(v)
        gpu.rmsprop_update(p_gpu, cupy.asarray(gr), s_gpu, m_gpu, v_gpu, rmsprop, scale=half["gpu"], **flags)
        record("rmsprop_update params", dtype, p_gpu, p_ref)
        record("rmsprop_update momentum", dtype, v_gpu, v_ref)
        _losses_and_fit_step(rng, ref, gpu, dtype, record)
    return rows


def _losses_and_fit_step(rng, ref, gpu, dtype, record):
    """The canonical losses, and what a fit step fuses: the logits' bias and the hits inside
    the losses, a hidden layer's delta with its bias gradient, the batch gather, the finish."""
    z = rng.normal(scale=3.0, size=(45, 6)).astype(dtype)
    b = rng.normal(size=6).astype(dtype)
    scale = rng.uniform(0.5, 2.0, size=45).astype(dtype)
    for name, y in (("sigmoid_bce", (rng.random(z.shape) < 0.4).astype(dtype)),
                    ("poisson_exp", rng.poisson(2.0, size=z.shape).astype(dtype))):
        extra = {"hits": None} if name == "sigmoid_bce" else {}
        want_z, want_g = z.copy(), np.empty_like(z)
        got_z, got_g = cupy.asarray(z), cupy.empty(z.shape, dtype)
        if extra:
            extra_ref, extra_gpu = {"hits": np.empty(z.shape, np.uint8)}, {"hits": cupy.empty(z.shape, np.uint8)}
        else:
            extra_ref = extra_gpu = {}
        loss_ref = getattr(ref, name)(want_z, y, want_g, scale, bias=b, **extra_ref)
        loss_gpu = getattr(gpu, name)(got_z, cupy.asarray(y), got_g, cupy.asarray(scale), bias=cupy.asarray(b),
                                      **extra_gpu)
        record(f"{name} loss [bias, row_scale]", dtype, loss_gpu, loss_ref)
        record(f"{name} grad [bias, row_scale]", dtype, got_g, want_g)
        record(f"{name} logits [bias]", dtype, got_z, want_z)
        if extra:
            record(f"{name} hits", dtype, extra_gpu["hits"], extra_ref["hits"])
    labels = rng.integers(0, 6, size=45)
    want_z, want_g, want_h = z.copy(), np.empty_like(z), np.empty(45, np.uint8)
    loss_ref = ref.softmax_xent(want_z, labels, want_g, scale, bias=b, hits=want_h)
    got_z, got_g, got_h = cupy.asarray(z), cupy.empty(z.shape, dtype), cupy.empty(45, np.uint8)
    loss_gpu = gpu.softmax_xent(got_z, cupy.asarray(labels), got_g, cupy.asarray(scale), bias=cupy.asarray(b),
                                hits=got_h)
    record("softmax_xent loss [bias, row_scale]", dtype, loss_gpu, loss_ref)
    record("softmax_xent grad [bias, row_scale]", dtype, got_g, want_g)
    record("softmax_xent hits", dtype, got_h, want_h)
    act = Tanh()
    for shape in ((67, 131), (700, 131)):      # one launch, then past the one-pass size
        a = act.forward(np, rng.normal(size=shape).astype(dtype))
        g = rng.normal(size=shape).astype(dtype)
        want_bias = np.empty(shape[1], dtype)
        want = ref.act_backward(g.copy(), a.astype(np.float64), act, bias_grad=want_bias.astype(np.float64))
        got, got_bias = cupy.asarray(g), cupy.empty(shape[1], dtype)
        gpu.act_backward(got, cupy.asarray(a), act, bias_grad=got_bias)
        record(f"act_backward + bias_grad delta [{shape[0]}x{shape[1]}]", dtype, got, want)
        record(f"act_backward + bias_grad bias [{shape[0]}x{shape[1]}]", dtype, got_bias,
               ref.bias_grad(want.astype(np.float64)))
    x, y_all, idx = rng.normal(size=(90, 13)).astype(dtype), rng.integers(0, 6, size=90), rng.integers(0, 90, 33)
    got = gpu.gather_rows(cupy.asarray(idx), [cupy.asarray(x), cupy.asarray(y_all)],
                          [cupy.empty((33, 13), dtype), cupy.empty(33, np.int64)])
    record("gather_rows features", dtype, got[0], x[idx])
    record("gather_rows labels", dtype, got[1], y_all[idx])
    grads = rng.normal(size=5003).astype(dtype)
    hits = (rng.random((45, 1)) < 0.5).astype(np.uint8)
    sums_ref, bad_ref, scale_ref = np.zeros(2), np.zeros((), bool), np.zeros((), dtype)
    ref.finish_step(dtype(0.7), grads.astype(np.float64), sums_ref, bad_ref, scale_ref, batch_weight=45,
                    clip_norm=2.0, hits=hits)
    sums_gpu, bad_gpu, scale_gpu = cupy.zeros(2), cupy.zeros((), bool), cupy.zeros((), dtype)
    gpu.finish_step(cupy.full((), 0.7, dtype), cupy.asarray(grads), sums_gpu, bad_gpu, scale_gpu, batch_weight=45,
                    clip_norm=2.0, hits=cupy.asarray(hits))
    record("finish_step sums", dtype, sums_gpu, sums_ref)
    record("finish_step clip scale", dtype, scale_gpu, scale_ref)
    record("finish_step finite flag", dtype, bad_gpu, bad_ref)
    out, y = rng.normal(size=(45, 6)).astype(dtype), rng.normal(size=(45, 6)).astype(dtype)
    for exp_outputs in (False, True):
        record(f"squared_error_sums [{'exp' if exp_outputs else 'identity'}]", dtype,
               gpu.squared_error_sums(cupy.asarray(out), cupy.asarray(y), cupy.zeros(6), exp_outputs=exp_outputs),
               ref.squared_error_sums(out.astype(np.float64), y.astype(np.float64), np.zeros(6),
                                      exp_outputs=exp_outputs))
