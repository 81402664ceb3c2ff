"""A training step as one CUDA graph (gpunet.step_graph): gpunet's own GEMM kernel (CuPy
refuses cuBLAS during stream capture) against NumPy's matmul in the three forms the step
uses; graphed fits against eager fits bit for bit (per-step schedules, Adam, clipping,
three losses, both dtypes, a short last batch); one graph launch per replayed step, no host
read and no allocation in it; the rule that picks graphs. Marked ``gpu``: a GPU, or the
host kernel emulator, which models stream capture (tests/emulator)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import gpunet as gn  # noqa: E402
from gpunet.cuda import launch  # noqa: E402
from gpunet.optim import SGD, Adam, AdamW, RMSprop  # noqa: E402
from gpunet.schedules import CosineDecay, LinearWarmup  # noqa: E402
from gpunet.step_graph import GRAPHS_ENV, StepGraph, graphs_wanted  # noqa: E402
from gpunet.train import TrainingStep, prepare  # noqa: E402
from test_cupy_kernels import DTYPES, assert_bitwise, draw, host  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture
def rng():
    return np.random.default_rng(31)


SHAPES = [(1, 1, 1), (5, 3, 7), (64, 64, 16), (65, 63, 17), (130, 70, 33), (3, 200, 129)]


def _operands(rng, m, k, n, form, dtype):
    """Host a (M, K), b (K, N) and the device views matmul gets for ``form``."""
    a, b = draw(rng, (m, k), dtype, scale=1.0), draw(rng, (k, n), dtype, scale=1.0)
    if form == "nn":
        return a, b, cupy.asarray(a), cupy.asarray(b)
    if form == "tn":     # dW = A^T delta: a arrives as the transpose of a C-contiguous (K, M)
        return a, b, cupy.asarray(np.ascontiguousarray(a.T)).T, cupy.asarray(b)
    return a, b, cupy.asarray(a), cupy.asarray(np.ascontiguousarray(b.T)).T   # delta W^T


@pytest.mark.parametrize("form", ["nn", "tn", "nt"])
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_matmul(gpu, ref, m, k, n, form, dtype, rng):
    a, b, a_dev, b_dev = _operands(rng, m, k, n, form, dtype)
    out = cupy.full((m, n), np.nan, dtype)
    launch.gemm(a_dev, b_dev, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    # each output sums k products in order: |error| <= k eps sum |a||b|
    bound = (k + 2) * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert (np.abs(host(out) - want) <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_matmul_takes_the_kernel_inside_kernel_gemms(gpu, dtype, rng):
    a, b, a_dev, b_dev = _operands(rng, 70, 40, 90, "tn", dtype)
    with gpu.kernel_gemms():
        got = gpu.matmul(a_dev, b_dev, out=cupy.empty((70, 90), dtype))
    direct = launch.gemm(a_dev, b_dev, cupy.empty((70, 90), dtype))
    assert_bitwise(got, direct)                      # the same kernel, the same bits
    again = launch.gemm(a_dev, b_dev, cupy.empty((70, 90), dtype))
    assert_bitwise(again, direct)                    # and deterministic


def test_gemm_refuses_what_it_cannot_take(rng):
    a = cupy.asarray(draw(rng, (4, 6), np.float32))
    with pytest.raises(ValueError, match="at most one transposed"):
        launch.gemm(a.T, cupy.asarray(draw(rng, (6, 4), np.float32)).T, cupy.empty((6, 6), np.float32))
    with pytest.raises(ValueError, match="shapes disagree"):
        launch.gemm(a, a, cupy.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        launch.gemm(a, a.T.astype(np.float64), cupy.empty((4, 4), np.float32))


# ---- the fit step as one CUDA graph (gpunet.step_graph) ---------------------------------------------
CASES = {
    "adam-per-step-schedule": dict(optimizer=lambda: Adam(lr=1e-2), schedule=lambda: CosineDecay(per="step")),
    "sgd-nesterov-clip": dict(optimizer=lambda: SGD(lr=0.05, momentum=0.9, nesterov=True), clip_norm=0.5,
                              schedule=lambda: LinearWarmup(2, then=CosineDecay())),
    "adamw": dict(optimizer=lambda: AdamW(lr=5e-3, weight_decay=0.1)),
    "rmsprop-centered": dict(optimizer=lambda: RMSprop(lr=1e-3, momentum=0.5, centered=True)),
}


def _problem(rng, kind, n=210, features=12):
    X = rng.normal(size=(n, features)).astype(np.float32)
    if kind == "softmax":
        return X, rng.integers(0, 4, n), dict(output="softmax", loss="cross_entropy")
    if kind == "sigmoid":
        return X, (rng.random((n, 3)) < 0.4).astype(np.float32), dict(output="sigmoid", loss="binary_cross_entropy")
    return X, rng.normal(size=(n, 2)).astype(np.float32), dict(output="identity", loss="mse")


def _fit(monkeypatch, graphs, kind, case, dtype, **extra):
    """A fit with graphs forced on, or the same fit eagerly with the same GEMM kernel."""
    rng = np.random.default_rng(8)
    X, y, head = _problem(rng, kind)
    monkeypatch.setenv(GRAPHS_ENV, "1" if graphs else "0")
    options = {k: (v() if callable(v) else v) for k, v in CASES[case].items()}
    net = gn.MLP([X.shape[1], 24, 16, y.shape[1] if y.ndim == 2 else 4], activation="tanh", dtype=dtype,
                 weight_decay=1e-3, seed=3, backend="cupy", **head)
    emulator = sys.modules.get("emulator.plugin")
    before = emulator.launch_counts() if emulator else None
    with net.backend.kernel_gemms():
        history = net.fit(X, y, epochs=4, batch_size=32, progress=False, **options, **extra)
    if emulator and graphs:    # 28 steps: 2 eager, 2 captured and launched, 24 replayed
        assert (emulator.launch_counts() - before)["graph_launch"] == 26
    return gn.to_numpy(net.flat_params), history


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "mse"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_graphed_fit_ends_where_the_eager_fit_ends_bit_for_bit(monkeypatch, case, kind, dtype):
    """4 epochs of 7 steps (6 of 32 rows, one of 18): 2 eager, 2 captured, 24 replayed."""
    graphed, history_graphed = _fit(monkeypatch, True, kind, case, dtype)
    eager, history_eager = _fit(monkeypatch, False, kind, case, dtype)
    assert graphed.tobytes() == eager.tobytes()
    for key in history_eager:
        if key != "time":
            assert history_graphed[key] == history_eager[key], key


def _graphed_epochs(monkeypatch, optimizer, schedule=None):
    """A StepGraph over a fit's plan, warmed by one epoch (eager, captured), for a test to drive."""
    monkeypatch.setenv(GRAPHS_ENV, "1")
    rng = np.random.default_rng(9)
    X, y, head = _problem(rng, "softmax", n=256)
    net = gn.MLP([12, 32, 4], dtype="float32", seed=0, backend="cupy", **head)
    plan = prepare(net, X, y, epochs=3, batch_size=64, lr=None, momentum=None, nesterov=None, clip_norm=None,
                   validation_data=None, shuffle=True, progress=False, optimizer=optimizer, schedule=schedule,
                   early_stopping=None, sample_weight=None)
    step = TrainingStep(net, plan.optimizer, plan.clip_norm)
    graph = StepGraph(step, plan)
    lrs = [plan.lr_for(0, i) for i in range(plan.steps_per_epoch)]
    step.begin_epoch(0)
    graph.run_epoch(np.random.default_rng(1).permutation(plan.n), lrs)
    return net, step, graph, plan, lrs


def test_a_replayed_step_is_one_graph_launch(monkeypatch):
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("launches are counted on the host kernel emulator")
    net, step, graph, plan, lrs = _graphed_epochs(monkeypatch, Adam(lr=1e-3), CosineDecay(per="step"))
    before = emulator.launch_counts()
    graph.run_epoch(np.random.default_rng(2).permutation(plan.n), lrs)
    made = emulator.launch_counts() - before
    # 4 steps: 4 graph launches; the epoch's setup zeroes the step counter once
    assert made["graph_launch"] == plan.steps_per_epoch == 4
    assert sum(v for k, v in made.items() if k != "graph_launch") <= 1, made
    assert len(graph.graphs) == 1 and graph.graphs[64].launches   # one captured shape: 256 = 4 x 64


def test_replayed_steps_read_nothing_back_and_allocate_nothing(monkeypatch, allocation_log):
    syncdetect = pytest.importorskip("cupyx")
    net, step, graph, plan, lrs = _graphed_epochs(monkeypatch, SGD(lr=0.05, momentum=0.9))
    order = np.random.default_rng(3).permutation(plan.n)
    with syncdetect.allow_synchronize(False), allocation_log() as log:
        graph.run_epoch(order, lrs)
    assert log.sizes == []
    assert not bool(step.bad) and np.isfinite(float(step.sums[0]))


def test_graphs_are_chosen_where_they_win_and_forced_by_the_environment(monkeypatch):
    rng = np.random.default_rng(4)
    X, y, head = _problem(rng, "softmax", n=64)

    def wanted(widths, batch, optimizer, weights=None, backend="cupy"):
        net = gn.MLP(widths, seed=0, backend=backend, **head)
        Xw = rng.normal(size=(64, widths[0])).astype(np.float32)
        plan = prepare(net, Xw, y, epochs=1, batch_size=batch, lr=None, momentum=None, nesterov=None,
                       clip_norm=None, validation_data=None, shuffle=True, progress=False, optimizer=optimizer,
                       schedule=None, early_stopping=None, sample_weight=weights)
        return graphs_wanted(net, plan.optimizer, plan)

    class Mine:            # a user's optimizer: no step table, so no graph
        lr = 0.1

        def step(self, *args, **kwargs):
            pass

    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert wanted([12, 32, 4], 64, "adam")                         # a small step: graphs
    assert not wanted([2000, 4000, 4000, 4], 64, "adam")            # ~7 GFLOP a step: cuBLAS
    assert not wanted([12, 32, 4], 64, Mine())
    assert not wanted([12, 32, 4], 64, "sgd", weights=np.ones(64))  # the batch weight sum: eager
    assert not wanted([12, 32, 4], 64, "sgd", backend="numpy")
    monkeypatch.setenv(GRAPHS_ENV, "1")
    assert wanted([2000, 4000, 4000, 4], 64, "adam")               # forced where they can run
    assert not wanted([12, 32, 4], 64, Mine())
    monkeypatch.setenv(GRAPHS_ENV, "0")
    assert not wanted([12, 32, 4], 64, "adam")
    monkeypatch.setenv(GRAPHS_ENV, "yes")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        wanted([12, 32, 4], 64, "adam")


def test_a_refused_capture_leaves_the_fit_running_eagerly(monkeypatch, caplog):
    net_backend = gn.MLP([3, 2], backend="cupy").backend

    def refuse(fn):
        raise RuntimeError("not capturable here")

    monkeypatch.setattr(type(net_backend), "capture", lambda self, fn: refuse(fn))
    monkeypatch.delitem(sys.modules, "emulator.plugin", raising=False)    # no graph launch to count
    graphed, history = _fit(monkeypatch, True, "softmax", "adamw", "float32")
    monkeypatch.undo()
    eager, _ = _fit(monkeypatch, False, "softmax", "adamw", "float32")
    assert graphed.tobytes() == eager.tobytes()
    assert "could not be captured" in caplog.text


def test_the_emulator_refuses_what_a_captured_step_must_not_hold():
    """The capture model's own check: a CuPy operation, cuBLAS or an allocation inside a
    capture raise, as the real ones would (or would break the graph)."""
    if "emulator.plugin" not in sys.modules:
        pytest.skip("the emulator's stream-capture model")
    stream = cupy.cuda.Stream(non_blocking=True)
    a = cupy.zeros((4, 4), np.float32)
    for bad in (lambda: a + a, lambda: cupy.matmul(a, a), lambda: cupy.empty(3)):
        with stream:
            stream.begin_capture()
            with pytest.raises(RuntimeError, match="during stream capture"):
                bad()
            stream.end_capture()
