"""Batches made on the host and streamed to the GPU (gpunet.feeds with CupyBackend's
PinnedBatchUploader): a memory-mapped fit and a stream fit end where the in-device fit ends,
bit for bit; the queue order keeps each copy ahead of its step and each slot's reuse behind
the step that read it, with page-locked buffers, no host read and no allocation once warm."""
from __future__ import annotations

import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import gpunet as gn  # noqa: E402
from gpunet.data import BatchStream  # noqa: E402
from gpunet.step_graph import GRAPHS_ENV  # noqa: E402
from gpunet.train import TrainingStep, prepare, run_epoch  # noqa: E402

pytestmark = pytest.mark.gpu


def _problem(n=300, f=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)) * 2 + 0.5
    return X, (X[:, 0] * X[:, 1] > 0.25).astype(np.int64)


def _memmap(tmp_path, X):
    np.save(tmp_path / "X.npy", X)
    return np.load(tmp_path / "X.npy", mmap_mode="r")


def _net(dtype="float32", **options):
    return gn.MLP([10, 24, 2], activation="tanh", dtype=dtype, seed=3, backend="cupy", **options)


def _figures(history):
    return {k: v for k, v in history.items() if k != "time"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_a_memmap_fit_on_the_gpu_is_the_in_device_fit(monkeypatch, tmp_path, dtype, weighted):
    monkeypatch.setenv(GRAPHS_ENV, "0")      # both fits eager: the same kernels, step for step
    X, y = _problem()
    w = np.random.default_rng(1).uniform(0.2, 2.0, size=len(y)) if weighted else None
    Xv, yv = _problem(n=60, seed=2)
    fits = []
    for data in (X, _memmap(tmp_path, X)):
        net = _net(dtype, standardize=True)
        history = net.fit(data, y, epochs=3, batch_size=64, lr=0.05, momentum=0.9, progress=False,
                          sample_weight=w, validation_data=(Xv, yv))
        fits.append((gn.to_numpy(net.flat_params), _figures(history)))
    assert fits[0][0].tobytes() == fits[1][0].tobytes()
    assert fits[0][1] == fits[1][1]


def test_a_stream_on_the_gpu_is_the_unshuffled_fit(monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "0")
    X, y = _problem()
    a, b = _net(), _net()
    ha = a.fit(X, y, epochs=2, batch_size=50, lr=0.05, shuffle=False, progress=False)
    hb = b.fit(BatchStream(lambda: ((X[s:s + 50], y[s:s + 50]) for s in range(0, len(X), 50))),
               epochs=2, lr=0.05, progress=False)
    assert gn.to_numpy(a.flat_params).tobytes() == gn.to_numpy(b.flat_params).tobytes()
    assert _figures(ha) == _figures(hb)


def _host_fed_plan(tmp_path, n=320, batch_size=64):
    X, y = _problem(n=n)
    net = _net()
    plan = prepare(net, _memmap(tmp_path, X), y, epochs=2, batch_size=batch_size, lr=0.05, momentum=0.0,
                   nesterov=False, clip_norm=None, validation_data=None, shuffle=True, progress=False,
                   optimizer=None, schedule=None, early_stopping=None, sample_weight=None)
    assert plan.feed is not None and plan.x is None
    return net, plan, TrainingStep(net, plan.optimizer, plan.clip_norm)


def _emulator():
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("the queue order is logged by the host kernel emulator")
    return emulator


def _batches_in_order(log, copy_stream):
    """The log cut into batches: each starts where a run of copies begins (with the event
    sync and wait just before it) and ends before the next such start."""
    starts = [i for i, (what, stream, _) in enumerate(log)
              if what == "copy" and (i == 0 or log[i - 1][0] != "copy")]
    batches = []
    for k, start in enumerate(starts):
        begin = start
        while begin > 0 and log[begin - 1][1] in (copy_stream, None) and log[begin - 1][0] in ("wait", "event_sync"):
            begin -= 1
        batches.append(begin)
    return [log[b:e] for b, e in zip(batches, batches[1:] + [len(log)])]


def test_each_copy_precedes_its_step_and_each_slot_waits_for_the_step_that_read_it(tmp_path):
    emulator = _emulator()
    net, plan, step = _host_fed_plan(tmp_path)
    run_epoch(net, plan, step, 0)                     # warm: buffers and workspaces made
    with emulator.ordering_log() as log:
        run_epoch(net, plan, step, 1)
    uploader = plan.feed._uploader
    copy_stream, compute = uploader.copy_stream.ptr, cupy.cuda.get_current_stream().ptr
    assert copy_stream != compute
    batches = _batches_in_order(list(log), copy_stream)
    assert len(batches) == plan.steps_per_epoch == 5
    consumed_after = []                               # per batch: the event recorded after its step
    for k, entries in enumerate(batches):
        kinds = [what for what, _, _ in entries]
        copies = [e for e in entries if e[0] == "copy"]
        assert len(copies) == 2 and all(stream == copy_stream for _, stream, _ in copies)   # features, labels
        first_copy = kinds.index("copy")
        # before the copies: the copy stream waits for the step that last read this slot
        # (two batches back; in the first two batches of this epoch, the last epoch's steps)
        waits = [e for e in entries[:first_copy] if e[0] == "wait"]
        assert len(waits) == 1 and waits[0][1] == copy_stream
        if k >= 2:
            assert waits[0][2] == consumed_after[k - 2]
        # after the copies: recorded on the copy stream, waited for on the compute stream,
        # and only then the step's launches
        record = entries[first_copy + 2]
        assert record[0] == "record" and record[1] == copy_stream
        wait = entries[first_copy + 3]
        assert wait == ("wait", compute, record[2])
        launches = [e for e in entries[first_copy + 4:] if e[0] == "launch"]
        assert len(launches) >= 5 and all(stream == compute for _, stream, _ in launches)
        last = entries[-1]
        assert last[0] == "record" and last[1] == compute     # the slot's "consumed" event
        consumed_after.append(last[2])
        # the host waits only for a copy it is about to overwrite the source of, never the compute stream
        assert all(what != "event_sync" or detail != last[2] for what, _, detail in entries)


def test_host_fed_steps_read_nothing_back_and_allocate_no_data_buffers_once_warm(tmp_path, allocation_log):
    syncdetect = pytest.importorskip("cupyx")
    net, plan, step = _host_fed_plan(tmp_path, n=256)     # 4 full batches: one shape
    step.begin_epoch(0)
    run_epoch(net, plan, step, 0)
    with syncdetect.allow_synchronize(False), allocation_log() as log:
        run_epoch(net, plan, step, 1)
    # nothing for the data: an eager step's only allocation is its 0-d loss (as in-device)
    assert log.sizes == [np.dtype(net.dtype).itemsize] * plan.steps_per_epoch
    assert not bool(step.bad) and np.isfinite(float(step.sums[0]))


def test_uploads_come_from_page_locked_buffers(tmp_path):
    emulator = _emulator()
    net, plan, step = _host_fed_plan(tmp_path)
    batches = plan.feed.epoch(0)
    next(batches)
    slot_buffers = [host for slot in plan.feed._uploader._slots for shapes in slot["buffers"].values()
                    for host, _ in shapes]
    assert slot_buffers and all(isinstance(h, emulator.PinnedHostArray) for h in slot_buffers)
    with pytest.raises(RuntimeError, match="pageable host memory"):
        cupy.empty(3, np.float32).set(np.ones(3, np.float32), stream=plan.feed._uploader.copy_stream)
