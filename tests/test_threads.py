"""One model, many callers: inference from threads, inference during fit, a second fit, and
the backend choice per thread and per asyncio task.

Every test here runs real threads against one model and compares with single-threaded
results bit for bit; on the old design (one workspace per batch size shared by all calls,
a global ``use_backend``) each of them failed. The backend fixture adds the CuPy backend
where a GPU works, and the host kernel emulator runs them on "CuPy" too.
"""
from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import gpunet as gn
import gpunet.backend as backend_module
from gpunet.optim import SGD

N_THREADS = 8


def _inputs(n_inputs, rows, features, seed=0):
    return [np.random.default_rng(seed + i).standard_normal((rows, features)).astype(np.float32)
            for i in range(n_inputs)]


def _hammer(call, items):
    """``[call(item) for item in items]``, the calls made from N_THREADS threads started together."""
    barrier = threading.Barrier(N_THREADS)

    def run(i):
        if i < N_THREADS:
            barrier.wait()
        return call(items[i])

    with ThreadPoolExecutor(N_THREADS) as pool:
        return list(pool.map(run, range(len(items))))


def _same(a, b) -> bool:
    a, b = gn.to_numpy(a), gn.to_numpy(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("method", ["predict_proba", "predict", "forward"])
def test_inference_from_threads_equals_single_threaded(backend, method):
    net = gn.MLP([64, 256, 256, 10], seed=0)
    xs = _inputs(N_THREADS, 1000, 64)
    call = getattr(net, method)
    want = [call(x) for x in xs]
    got = _hammer(call, xs * 8)
    wrong = [i for i, out in enumerate(got) if not _same(out, want[i % len(xs)])]
    assert not wrong, f"{len(wrong)} of {len(got)} calls from threads differ from single-threaded results"


def test_score_loss_and_gradients_from_threads(backend):
    net = gn.MLP([20, 64, 5], activation="tanh", weight_decay=1e-3, seed=1)
    xs = _inputs(N_THREADS, 300, 20, seed=10)
    ys = [np.random.default_rng(50 + i).integers(0, 5, size=300) for i in range(N_THREADS)]
    pairs = list(zip(xs, ys))
    calls = {"score": net.score, "loss": net.loss, "loss_and_grad": net.loss_and_grad}
    want = {(kind, i): call(*pairs[i]) for kind, call in calls.items() for i in range(N_THREADS)}
    jobs = list(want) * 4
    got = _hammer(lambda job: calls[job[0]](*pairs[job[1]]), jobs)
    for job, value in zip(jobs, got):
        expected = want[job]
        if job[0] == "loss_and_grad":
            assert value[0] == expected[0]
            assert all(_same(g, w) for g, w in zip(value[1], expected[1])), job
        else:
            assert value == expected, job


def test_regressor_inference_from_threads(backend):
    net = gn.MLP([8, 32, 3], output="identity", loss="mse", seed=2, dtype="float64")
    xs = [x.astype(np.float64) for x in _inputs(N_THREADS, 500, 8, seed=20)]
    want = [net.predict(x) for x in xs]
    got = _hammer(net.predict, xs * 4)
    assert all(_same(out, want[i % len(xs)]) for i, out in enumerate(got))


class _SnapshotSGD(SGD):
    """SGD that keeps a host copy of the parameters after every update (taken inside the
    update, where the model's write lock is held)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.snapshots = []

    def step(self, backend, params, grads, **kwargs):
        super().step(backend, params, grads, **kwargs)
        self.snapshots.append(gn.to_numpy(params).copy())


def test_inference_during_fit_sees_parameters_between_two_steps(backend):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 32)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    net = gn.MLP([32, 128, 3], seed=3)
    probe = X[:700]
    initial = gn.to_numpy(net.flat_params).copy()
    optimizer = _SnapshotSGD(lr=0.05, momentum=0.9)
    done = threading.Event()
    seen = []

    def predict_while_training():
        while not done.is_set():
            seen.append(net.predict_proba(probe))

    readers = [threading.Thread(target=predict_while_training) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        net.fit(X, y, epochs=3, batch_size=50, optimizer=optimizer, progress=False)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert len(seen) >= 3
    twin = gn.MLP([32, 128, 3], seed=3)
    expected = {}
    for params in [initial, *optimizer.snapshots]:
        twin.set_flat_params(params)
        expected[twin.predict_proba(probe).tobytes()] = True
    torn = sum(out.tobytes() not in expected for out in seen)
    assert torn == 0, f"{torn} of {len(seen)} predictions during fit match no parameters between two steps"


def test_fit_while_others_predict_trains_exactly_as_alone(backend):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((1200, 16)).astype(np.float32)
    y = (X.sum(axis=1) > 0).astype(int)
    alone = gn.MLP([16, 64, 2], seed=4)
    alone.fit(X, y, epochs=3, batch_size=40, lr=0.05, momentum=0.9, progress=False)
    busy = gn.MLP([16, 64, 2], seed=4)
    done = threading.Event()

    def predict_same_batch_size():
        while not done.is_set():
            busy.predict(X[:40])

    readers = [threading.Thread(target=predict_same_batch_size) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        busy.fit(X, y, epochs=3, batch_size=40, lr=0.05, momentum=0.9, progress=False)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert _same(busy.flat_params, alone.flat_params)


class _Pause:
    """A per-epoch schedule (factor 1) that holds the fit at the start of its first epoch,
    between steps, until the test releases it."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, epoch):
        self.started.set()
        assert self.release.wait(30), "the test never released the fit"
        return 1.0


def test_a_second_fit_of_a_training_model_is_refused(backend):
    X = np.random.default_rng(5).standard_normal((64, 6)).astype(np.float32)
    y = np.arange(64) % 3
    net = gn.MLP([6, 8, 3], seed=5)
    pause, errors = _Pause(), []

    def train():
        try:
            net.fit(X, y, epochs=1, lr=0.1, schedule=pause, progress=False)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    try:
        assert pause.started.wait(30)
        before = gn.to_numpy(net.flat_params).copy()
        with pytest.raises(RuntimeError, match="already running in another thread"):
            net.fit(X, y, epochs=1, progress=False)
        with pytest.raises(RuntimeError, match="another thread is training this model"):
            net.set_flat_params(before)
        assert _same(net.flat_params, before)
        assert net.predict(X).shape == (64,)        # inference goes on meanwhile
    finally:
        pause.release.set()
        thread.join()
    assert not errors
    net.fit(X, y, epochs=1, progress=False)          # free again once the first fit returned


def test_fit_from_inside_fit_is_refused():
    X = np.random.default_rng(6).standard_normal((20, 4))
    y = np.arange(20) % 2
    net = gn.MLP([4, 5, 2], seed=6)

    class Reentrant(SGD):
        def step(self, *args, **kwargs):
            net.fit(X, y, epochs=1, progress=False)

    with pytest.raises(RuntimeError, match="already running in this thread"):
        net.fit(X, y, epochs=1, optimizer=Reentrant(lr=0.1), progress=False)
    net.fit(X, y, epochs=1, progress=False)


# ---- the backend choice: per thread and per task ------------------------------------------------
@pytest.fixture
def numpy_default(monkeypatch):
    monkeypatch.setattr(backend_module, "_default", None)
    return gn.set_backend("numpy")


def test_use_backend_in_one_thread_leaves_the_others_alone(numpy_default):
    entered, leave = threading.Event(), threading.Event()
    scoped = {}

    def hold_a_block():
        with gn.use_backend("numpy") as mine:
            scoped["a"] = mine
            entered.set()
            leave.wait(30)
            scoped["a_inside"] = gn.MLP([2, 2], seed=0).backend

    holder = threading.Thread(target=hold_a_block)
    holder.start()
    assert entered.wait(30)
    built_meanwhile = gn.MLP([2, 2], seed=0).backend
    leave.set()
    holder.join()
    assert built_meanwhile is numpy_default
    assert scoped["a_inside"] is scoped["a"] is not numpy_default
    assert gn.get_backend() is numpy_default


def test_interleaved_blocks_in_two_threads_restore_their_own_backend(numpy_default):
    """A in, B in, A out, B out: each thread sees its own block, then the default."""
    steps = [threading.Event() for _ in range(4)]
    seen = {}

    def thread_a():
        with gn.use_backend("numpy") as mine:
            steps[0].set()
            steps[1].wait(30)
            seen["a_in"] = gn.get_backend() is mine
        seen["a_after"] = gn.get_backend()
        steps[2].set()

    def thread_b():
        steps[0].wait(30)
        with gn.use_backend("numpy") as mine:
            steps[1].set()
            steps[2].wait(30)
            seen["b_in"] = gn.get_backend() is mine
        seen["b_after"] = gn.get_backend()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a_in"] and seen["b_in"]
    assert seen["a_after"] is numpy_default and seen["b_after"] is numpy_default
    assert gn.get_backend() is numpy_default


def test_use_backend_is_local_to_an_asyncio_task(numpy_default):
    async def task(name, results, gate):
        with gn.use_backend("numpy") as mine:
            await gate.wait()                   # the other task runs its block meanwhile
            results[name] = (mine, gn.get_backend())

    async def main():
        results, gate = {}, asyncio.Event()
        tasks = [asyncio.create_task(task(n, results, gate)) for n in ("a", "b")]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return results, gn.get_backend()

    results, after = asyncio.run(main())
    for mine, seen in results.values():
        assert seen is mine
    assert results["a"][0] is not results["b"][0]
    assert after is numpy_default


def test_a_model_keeps_its_backend_whatever_other_threads_select(numpy_default):
    net = gn.MLP([3, 4, 2], seed=0)

    def elsewhere():
        with gn.use_backend("numpy"):
            assert net.backend is numpy_default
            net.predict(np.ones((2, 3)))

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert net.backend is numpy_default


# ---- CuPy: per-thread scratch buffers and ordering across streams (GPU, or the emulator) ----------
@pytest.mark.gpu
def test_cupy_losses_and_predictions_from_threads():
    """The CuPy backend's reduction scratch (row losses, block sums) is per thread: shared,
    one thread's sum would read another's partial results."""
    with gn.use_backend("cupy"):
        net = gn.MLP([12, 48, 6], activation="relu", seed=8)
        mse = gn.MLP([12, 48, 2], output="sigmoid", loss="mse", seed=8)
    xs = _inputs(N_THREADS, 257, 12, seed=30)
    ys = [np.random.default_rng(70 + i).integers(0, 6, size=257) for i in range(N_THREADS)]
    ts = [np.random.default_rng(90 + i).uniform(size=(257, 2)) for i in range(N_THREADS)]
    calls = {"loss": lambda i: net.loss(xs[i], ys[i]), "mse": lambda i: mse.loss(xs[i], ts[i]),
             "proba": lambda i: net.predict_proba(xs[i])}
    want = {(kind, i): call(i) for kind, call in calls.items() for i in range(N_THREADS)}
    jobs = list(want) * 4
    got = _hammer(lambda job: calls[job[0]](job[1]), jobs)
    wrong = [job for job, value in zip(jobs, got) if not _same(value, want[job])]
    assert not wrong, f"{len(wrong)} of {len(jobs)} calls differ: {wrong[:5]}"


@pytest.mark.gpu
def test_cupy_readers_on_other_streams_are_ordered_after_the_last_update():
    cupy = pytest.importorskip("cupy")
    emulator = sys.modules.get("emulator.plugin")
    X = np.random.default_rng(9).standard_normal((300, 10)).astype(np.float32)
    with gn.use_backend("cupy"):
        net = gn.MLP([10, 32, 4], seed=9)
        twin = gn.MLP([10, 32, 4], seed=10)
    new_params = gn.to_numpy(twin.flat_params)
    want = twin.predict_proba(X)
    net.set_flat_params(new_params)                  # an update queued on the null stream
    stream = cupy.cuda.Stream(non_blocking=True)
    if emulator is not None:
        emulator.STREAM_LOG.clear()
    with stream:
        got = net.predict_proba(X)                   # read on another stream
    np.testing.assert_array_equal(got, want)
    if emulator is not None:   # the reader's stream waited for an event on the writer's
        assert emulator.STREAM_LOG[:2] == [("record", cupy.cuda.Stream.null.ptr), ("wait", stream.ptr)]
        emulator.STREAM_LOG.clear()
    net.set_flat_params(new_params * 0.5)            # the next update waits for that reader
    if emulator is not None:
        assert emulator.STREAM_LOG == [("record", stream.ptr), ("wait", cupy.cuda.Stream.null.ptr)]
