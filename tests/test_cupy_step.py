"""The kernels around a fit step (kernels/step.cu) against their NumPy twins: the batch
gather, the finish (non-finite flag, clipping factor, running loss and hit count) and a
regressor's squared-error sums. Fresh random inputs, both dtypes, odd shapes, sizes that
wrap the grid or pass the finish's single-block limit, non-finite values, out-of-range
indices. Marked ``gpu``: a GPU, or the host kernel emulator (tests/emulator)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from gpunet.activations import get_activation  # noqa: E402
from conftest import ELEMENTWISE_ACTIVATIONS as ACTS  # noqa: E402
from gpunet.cuda import launch  # noqa: E402
from test_cupy_kernels import (DTYPES, WRAP_1D, WRAP_WARP_ROWS, assert_bitwise, assert_near,  # noqa: E402
                               assert_xent_close, draw, host, long_rows)

__all__ = ["long_rows"]   # a fixture, used by name

pytestmark = pytest.mark.gpu


@pytest.fixture
def rng():
    return np.random.default_rng(20261129)


# ---- gather ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, cols, src_rows", [(1, 1, 1), (7, 3, 50), (128, 784, 300), (33, 1, 1000),
                                                  (-(-WRAP_1D // 20), 19, 5000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_matches_take(gpu, ref, rows, cols, src_rows, dtype, rng):
    x = draw(rng, (src_rows, cols), dtype)
    labels = rng.integers(-5, 10**12, src_rows)             # int64 labels: two words a row
    weights = draw(rng, (src_rows,), dtype)
    idx = rng.integers(0, src_rows, rows)
    want = ref.gather_rows(idx, [x, labels, weights], [np.empty((rows, cols), dtype), np.empty(rows, np.int64),
                                                         np.empty(rows, dtype)])
    outs = [cupy.empty((rows, cols), dtype), cupy.empty(rows, np.int64), cupy.empty(rows, dtype)]
    got = gpu.gather_rows(cupy.asarray(idx), [cupy.asarray(x), cupy.asarray(labels), cupy.asarray(weights)], outs)
    for g, w in zip(got, want):
        assert_bitwise(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_of_one_array_and_of_targets_matrices(gpu, ref, dtype, rng):
    x = draw(rng, (40, 5), dtype)
    y = draw(rng, (40, 3), dtype)
    idx = rng.permutation(40)[:17]
    got = gpu.gather_rows(cupy.asarray(idx), [cupy.asarray(x)], [cupy.empty((17, 5), dtype)])
    assert_bitwise(got[0], x[idx])
    got = gpu.gather_rows(cupy.asarray(idx), [cupy.asarray(x), cupy.asarray(y)],
                          [cupy.empty((17, 5), dtype), cupy.empty((17, 3), dtype)])
    assert_bitwise(got[1], y[idx])


def test_gather_rows_out_of_range_fills_nan_and_label_minus_one(gpu, rng):
    x = draw(rng, (10, 4), np.float32)
    labels = np.arange(10, dtype=np.int64)
    idx = cupy.asarray(np.array([3, -1, 10, 9], dtype=np.int64))
    xo, yo = cupy.empty((4, 4), np.float32), cupy.empty(4, np.int64)
    launch.gather_rows(idx, [cupy.asarray(x), cupy.asarray(labels)], [xo, yo], cupy.zeros((), np.int64))
    xo, yo = host(xo), host(yo)
    assert_bitwise(xo[[0, 3]], x[[3, 9]])
    assert np.isnan(xo[[1, 2]]).all() and list(yo) == [3, -1, -1, 9]


def test_gather_rows_refuses_what_it_cannot_copy(rng):
    idx, step = cupy.asarray(np.array([0, 1], dtype=np.int64)), cupy.zeros((), np.int64)
    with pytest.raises(ValueError, match="2 indices for 3 rows"):
        launch.gather_rows(idx, [cupy.zeros((4, 3), np.float32)], [cupy.empty((3, 3), np.float32)], step)
    with pytest.raises(ValueError, match="do not fit"):
        launch.gather_rows(idx, [cupy.zeros((4, 3), np.float32)], [cupy.empty((2, 4), np.float32)], step)
    with pytest.raises(TypeError, match="32-bit words"):
        launch.gather_rows(idx, [cupy.zeros((4, 3), np.uint8)], [cupy.empty((2, 3), np.uint8)], step)
    with pytest.raises(ValueError, match="one to three"):
        launch.gather_rows(idx, [], [], step)


# ---- softmax-cross-entropy in a fit step: the logits' bias and the hits folded in ------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (33, 1000), (3, 1025), (4, 32768), (WRAP_WARP_ROWS, 3)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "row_scale"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_with_bias_and_hits_matches_its_twin(gpu, ref, shape, weighted, dtype, rng, long_rows):
    rows, cols = shape
    z, bias = draw(rng, shape, dtype, scale=3.0), draw(rng, (cols,), dtype)
    z[:, 0] = z[:, 1] if cols > 1 else z[:, 0]      # ties: the argmax is the first of them
    labels = rng.integers(0, cols, size=rows)
    labels[::3] = (z + bias)[::3].argmax(axis=1)    # some rows predicted right
    scale = rng.random(rows).astype(dtype) * 2 if weighted else None
    want_z, want_grad, want_hits = z.copy(), np.empty_like(z), np.empty(rows, np.uint8)
    want_loss = ref.softmax_xent(want_z, labels, want_grad, scale, bias=bias, hits=want_hits)
    logits, grad, hits = cupy.asarray(z), cupy.empty(shape, dtype), cupy.full(rows, 7, np.uint8)
    loss = gpu.softmax_xent(logits, cupy.asarray(labels), grad, None if scale is None else cupy.asarray(scale),
                            bias=cupy.asarray(bias), hits=hits)
    assert_xent_close(loss, grad, float(want_loss), want_grad, dtype, rows)
    assert_bitwise(logits, want_z)                # z + bias written back: the logits
    assert_bitwise(hits, want_hits)
    assert want_hits.sum() >= len(labels[::3])


def test_softmax_xent_with_bias_when_grad_is_the_logits(gpu, ref, rng):
    z, bias = draw(rng, (9, 20), np.float64), draw(rng, (20,), np.float64)
    labels = rng.integers(0, 20, size=9)
    want = np.empty_like(z)
    want_loss = ref.softmax_xent(z.copy(), labels, want, bias=bias)
    logits = cupy.asarray(z)
    loss = gpu.softmax_xent(logits, cupy.asarray(labels), logits, bias=cupy.asarray(bias))
    assert_xent_close(loss, logits, float(want_loss), want, np.float64, 9)


# ---- finish ---------------------------------------------------------------------------------
def _finish_both(gpu, ref, dtype, loss, grads, *, batch_weight, clip_norm, hits=None, bad=False, sums=(0.5, 2.0)):
    """(device results, reference results): sums, bad, scale after one finish of each."""
    results = []
    for be, xp in ((gpu, cupy), (ref, np)):
        out = dict(sums=xp.asarray(np.array(sums, dtype=np.float64)), bad=xp.asarray(np.array(bad)),
                   scale=xp.asarray(np.array(7.0, dtype=dtype)))
        weight = xp.asarray(np.array(batch_weight, dtype=dtype)) if isinstance(batch_weight, np.ndarray) \
            else batch_weight
        be.finish_step(xp.asarray(np.array(loss, dtype=dtype)), xp.asarray(grads), out["sums"], out["bad"],
                       out["scale"], batch_weight=weight, clip_norm=clip_norm,
                       hits=None if hits is None else xp.asarray(hits))
        results.append({k: host(v) for k, v in out.items()})
    return results


@pytest.mark.parametrize("size", [1, 1000, launch.FINISH_SINGLE_BLOCK_MAX, launch.FINISH_SINGLE_BLOCK_MAX + 1,
                                  WRAP_1D])
@pytest.mark.parametrize("clip_norm", [None, 0.5, 1e30])
@pytest.mark.parametrize("dtype", DTYPES)
def test_finish_step_matches_its_twin(gpu, ref, size, clip_norm, dtype, rng):
    grads = draw(rng, (size,), dtype, scale=0.1)
    hits = rng.random((257, 1)) < 0.6
    got, want = _finish_both(gpu, ref, dtype, 0.75, grads, batch_weight=128, clip_norm=clip_norm, hits=hits)
    assert not got["bad"] and not want["bad"]
    assert_near(got["scale"], want["scale"], dtype, ulps=4 * (1 + size // 1000) if dtype == np.float32 else 8)
    assert_bitwise(got["sums"], want["sums"])
    assert got["sums"][1] == 2.0 + hits.sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_finish_step_counts_rows_whose_every_label_is_right(gpu, ref, dtype, rng):
    hits = rng.random((300, 3)) < 0.8     # multilabel: a row counts when all three are right
    got, want = _finish_both(gpu, ref, dtype, 1.0, draw(rng, (50,), dtype), batch_weight=300, clip_norm=None,
                             hits=hits.astype(np.uint8))
    assert got["sums"][1] == want["sums"][1] == 2.0 + hits.all(axis=1).sum()


@pytest.mark.parametrize("where", ["loss", "grad_nan", "grad_inf", "grad_overflows_dtype"])
@pytest.mark.parametrize("size", [100, launch.FINISH_SINGLE_BLOCK_MAX + 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_finish_step_flags_what_is_not_finite(gpu, ref, where, size, dtype, rng):
    grads = draw(rng, (size,), dtype)
    loss = np.nan if where == "loss" else 0.5
    if where == "grad_nan":
        grads[size // 2] = np.nan
    elif where == "grad_inf":
        grads[-1] = -np.inf
    elif where == "grad_overflows_dtype":      # finite entries whose squares overflow the dtype
        grads[:4] = np.sqrt(np.finfo(dtype).max)
    got, want = _finish_both(gpu, ref, dtype, loss, grads, batch_weight=10, clip_norm=1.0)
    assert got["bad"] and want["bad"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_finish_step_keeps_a_raised_flag_and_weighs_by_a_device_sum(gpu, ref, dtype, rng):
    grads = draw(rng, (64,), dtype)
    got, want = _finish_both(gpu, ref, dtype, 0.25, grads, batch_weight=np.array(3.5), clip_norm=None, bad=True)
    assert got["bad"] and want["bad"]               # never cleared by a finite step
    assert got["scale"] == want["scale"] == 1
    assert_bitwise(got["sums"], want["sums"])
    assert got["sums"][0] == 0.5 + 0.25 * 3.5 and got["sums"][1] == 2.0    # no hits: untouched


# ---- a regressor's running metric -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (1000, 1), (7, 1000), (4100, 33)])
@pytest.mark.parametrize("exp_outputs", [False, True], ids=["identity", "exp"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_squared_error_sums_match_their_twin(gpu, ref, shape, exp_outputs, dtype, rng):
    out, targets = draw(rng, shape, dtype, scale=1.0), draw(rng, shape, dtype)
    start = rng.random(shape[1])
    got = gpu.squared_error_sums(cupy.asarray(out), cupy.asarray(targets), cupy.asarray(start),
                                 exp_outputs=exp_outputs)
    want = ref.squared_error_sums(out, targets, start.copy(), exp_outputs=exp_outputs)
    # the twin sums the squares in the dtype, the kernel in double
    np.testing.assert_allclose(host(got), want, rtol=2e-5 if dtype == np.float32 else 1e-12)


# ---- a hidden layer's delta and bias gradient in one pass -------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (128, 128), (256, 256), (257, 300), (1000, 1), (3, 1000)])
@pytest.mark.parametrize("act_name", list(ACTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_with_bias_grad_matches_its_twin(gpu, ref, act_name, shape, dtype, rng):
    act = ACTS[act_name]
    a = act.forward(np, draw(rng, shape, dtype))
    grad = draw(rng, shape, dtype)
    want_bias = np.empty(shape[1], dtype)
    want = ref.act_backward(grad.copy(), a, act, bias_grad=want_bias)
    got_grad, got_bias = cupy.asarray(grad), cupy.full(shape[1], np.nan, dtype)
    gpu.act_backward(got_grad, cupy.asarray(a), act, bias_grad=got_bias)
    assert_bitwise(got_grad, want)      # the same product as act_backward alone
    assert_near(got_bias, want_bias, dtype, ulps=4 * (1 + shape[0] // 64), scale=float(np.abs(want).sum(axis=0).max()))


@pytest.mark.parametrize("shape", [(128, 128), (300, 257)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_with_bias_grad_equals_the_two_kernels_bitwise(gpu, shape, dtype, rng):
    act = get_activation("tanh")
    a, grad = cupy.asarray(act.forward(np, draw(rng, shape, dtype))), cupy.asarray(draw(rng, shape, dtype))
    fused_grad, fused_bias = grad.copy(), cupy.empty(shape[1], dtype)
    gpu.act_backward(fused_grad, a, act, bias_grad=fused_bias)
    apart = gpu.act_backward(grad.copy(), a, act)
    assert_bitwise(fused_grad, apart)
    assert_bitwise(fused_bias, gpu.bias_grad(apart))


def test_act_backward_with_bias_grad_is_one_launch_at_small_sizes(gpu, rng):
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("launches are counted on the host kernel emulator")
    act = get_activation("relu")
    for shape, launches in (((128, 128), 1), ((1024, 1024), 2)):
        a, grad = cupy.asarray(draw(rng, shape, np.float32)), cupy.asarray(draw(rng, shape, np.float32))
        bias = cupy.empty(shape[1], np.float32)
        before = emulator.launch_counts()
        gpu.act_backward(grad, a, act, bias_grad=bias)
        made = emulator.launch_counts() - before
        assert sum(made.values()) == launches, made


# ---- the element-wise losses in a fit step: the output bias (and activation) and hits inside ----
@pytest.mark.parametrize("name", ["sigmoid_bce", "poisson_exp"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (33, 10), (-(-WRAP_1D // 7), 7)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "row_scale"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_canonical_losses_with_bias_and_hits_match_their_twins(gpu, ref, name, shape, weighted, dtype, rng):
    if shape[0] * shape[1] > 10**6 and (weighted or dtype == np.float64):
        pytest.skip("the grid-wrapping size is run once per loss")
    z, bias = draw(rng, shape, dtype, scale=2.0), draw(rng, (shape[1],), dtype)
    y = ((rng.random(shape) < 0.4) if name == "sigmoid_bce" else rng.poisson(2.0, shape)).astype(dtype)
    scale = rng.uniform(0.5, 2.0, shape[0]).astype(dtype) if weighted else None
    kw_ref, kw_gpu = {}, {}
    if name == "sigmoid_bce":
        kw_ref["hits"], kw_gpu["hits"] = np.empty(shape, np.uint8), cupy.full(shape, 9, np.uint8)
    want_z, want_g = z.copy(), np.empty_like(z)
    want = getattr(ref, name)(want_z, y, want_g, scale, bias=bias, **kw_ref)
    got_z, got_g = cupy.asarray(z), cupy.empty(shape, dtype)
    got = getattr(gpu, name)(got_z, cupy.asarray(y), got_g, None if scale is None else cupy.asarray(scale),
                             bias=cupy.asarray(bias), **kw_gpu)
    assert_bitwise(got_z, want_z)     # the logits, bias included, written back
    assert_near(got_g, want_g, dtype, ulps=16, scale=float(np.abs(want_g).max()))
    assert_near(got, want, dtype, ulps=16 + shape[0] // 1000, scale=max(1.0, abs(float(want))))
    if kw_gpu:
        assert_bitwise(kw_gpu["hits"], kw_ref["hits"])


@pytest.mark.parametrize("act_name", list(ACTS))
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (128, 10), (-(-WRAP_1D // 5), 5)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "row_scale"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_with_the_output_layer_inside_matches_its_twin(gpu, ref, act_name, shape, weighted, dtype, rng):
    if shape[0] * shape[1] > 10**6 and (weighted or dtype == np.float64 or act_name not in ("identity", "sigmoid")):
        pytest.skip("the grid-wrapping size is run for two activations")
    act = ACTS[act_name]
    aw, bias, y = draw(rng, shape, dtype), draw(rng, (shape[1],), dtype), draw(rng, shape, dtype)
    scale = rng.uniform(0.5, 2.0, shape[0]).astype(dtype) if weighted else None
    want_a, want_g = aw.copy(), np.empty_like(aw)
    want = ref.mse_grad(want_a, y, act, want_g, scale, bias=bias)
    got_a, got_g = cupy.asarray(aw), cupy.empty(shape, dtype)
    got = gpu.mse_grad(got_a, cupy.asarray(y), act, got_g, None if scale is None else cupy.asarray(scale),
                       bias=cupy.asarray(bias))
    assert_near(got_a, want_a, dtype, ulps=4)        # f(A W + b), written back: the outputs
    assert_near(got_g, want_g, dtype, ulps=16, scale=float(np.abs(want_g).max()))
    assert_near(got, want, dtype, ulps=16 + shape[0] // 1000, scale=max(1.0, abs(float(want))))


# ---- one-launch reductions ----------------------------------------------------------------------
def test_one_launch_reductions_rearm_their_counter_and_agree_with_two_passes(gpu, ref, rng):
    """The last block resets the arrivals counter: back-to-back launches of different grids
    (sumsq, a loss) each see a full set of tickets, and give the two-pass values bit for bit."""
    counter = gpu._arrivals()
    for size in (1, 5000, 300_001, 17):
        x = cupy.asarray(draw(rng, (size,), np.float64))
        got = gpu.sumsq(x)
        assert int(host(counter)[0]) == 0
        want = (host(x).astype(np.float64) ** 2).sum()
        np.testing.assert_allclose(float(host(got)), want, rtol=1e-12)
    z = cupy.asarray(draw(rng, (4000, 12), np.float64))
    labels = cupy.asarray(rng.integers(0, 12, 4000))
    first = gpu.softmax_xent(z, labels, cupy.empty(z.shape, np.float64))
    again = gpu.softmax_xent(z, labels, cupy.empty(z.shape, np.float64))
    assert_bitwise(first, again) and int(host(counter)[0]) == 0
    want = ref.softmax_xent(host(z), host(labels), np.empty(z.shape))
    assert_near(first, float(want), np.float64, ulps=64, scale=1.0)
