"""Watching, extending and resuming training: callbacks and their hooks, the progress shown
by ``verbose``, checkpoints that resume bit for bit, Ctrl-C at a step boundary, and the
parameters kept after a divergence."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import gpunet as gn
from gpunet import callbacks as cb
from gpunet.optim import SGD, Adam, RMSprop
from gpunet.schedules import CosineDecay, EarlyStopping, LinearWarmup
from gpunet.train import TrainingDiverged, TrainingInterrupted


def _data(n=320, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def _net(**options):
    return gn.MLP([6, 16, 2], seed=1, **options)


def _figures(history):
    return {k: v for k, v in history.items() if k != "time"}


def _params(net):
    return gn.to_numpy(net.flat_params).copy()


FIT = dict(epochs=6, batch_size=32, lr=0.05, verbose=0)


# ---- hooks -------------------------------------------------------------------------------------
def test_hooks_are_called_in_order_with_the_run():
    X, y = _data()
    calls = []
    spy = cb.LambdaCallback(
        on_train_begin=lambda run: calls.append(("train_begin", run.epoch, run.epochs)),
        on_epoch_begin=lambda run, epoch: calls.append(("epoch_begin", epoch)),
        on_batch_end=lambda run, batch, loss: calls.append(("batch", batch, float(loss) > 0)),
        on_epoch_end=lambda run, epoch, logs: calls.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda run: calls.append(("train_end", run.interrupted, run.diverged)))
    history = _net().fit(X, y, epochs=2, batch_size=100, lr=0.05, verbose=0, callbacks=[spy],
                         validation_data=(X[:50], y[:50]))
    keys = sorted(history)
    assert calls == [("train_begin", 0, 2),
                     ("epoch_begin", 0), *[("batch", b, True) for b in range(4)], ("epoch_end", 0, keys),
                     ("epoch_begin", 1), *[("batch", b, True) for b in range(4)], ("epoch_end", 1, keys),
                     ("train_end", False, False)]


def test_the_history_is_a_callback_and_sees_what_the_others_see():
    X, y = _data()
    seen = []
    history = _net().fit(X, y, **FIT, callbacks=[cb.LambdaCallback(
        on_epoch_end=lambda run, epoch, logs: seen.append((run.history is not None, dict(logs))))])
    assert isinstance(history, cb.Callback)
    assert [logs["loss"] for _, logs in seen] == history["loss"]
    assert [logs["accuracy"] for _, logs in seen] == history["accuracy"]


def test_a_callback_stops_after_an_epoch_or_a_step():
    X, y = _data()

    def stop_after_two(run, epoch, logs):
        if epoch == 1:
            run.stop_training = True
    history = _net().fit(X, y, **FIT, callbacks=[cb.LambdaCallback(on_epoch_end=stop_after_two)])
    assert history.epochs == 2

    def stop_mid_epoch(run, batch, loss):
        if run.epoch == 2 and batch == 3:
            run.stop_training = True
    net = _net()
    history = net.fit(X, y, **FIT, callbacks=[cb.LambdaCallback(on_batch_end=stop_mid_epoch)])
    assert history.epochs == 2            # the stopped epoch is not recorded
    assert np.isfinite(_params(net)).all()


def test_early_stopping_as_a_callback_is_early_stopping():
    X, y = _data()
    Xv, yv = _data(n=80, seed=3)
    runs = []
    for how in ("argument", "callback"):
        net = _net()
        stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=1e-2)
        options = {"early_stopping": stopper} if how == "argument" else {"callbacks": [stopper]}
        history = net.fit(X, y, epochs=40, batch_size=32, lr=0.2, momentum=0.9, verbose=0,
                          validation_data=(Xv, yv), **options)
        runs.append((_params(net), _figures(history), history.stopped_epoch, history.best_epoch))
    assert runs[0][2] is not None and runs[0][2] < 40
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]


def test_bad_callbacks_are_refused():
    X, y = _data()
    net = _net()
    with pytest.raises(TypeError, match="wrap a function in LambdaCallback"):
        net.fit(X, y, callbacks=[print])
    with pytest.raises(TypeError, match="on_epoch_end must be callable"):
        cb.LambdaCallback(on_epoch_end=3)
    with pytest.raises(ValueError, match="early stopping cannot monitor 'val_loss'|no validation_data"):
        net.fit(X, y, callbacks=[EarlyStopping(monitor="val_loss")])


# ---- built-ins ---------------------------------------------------------------------------------------
def test_model_checkpoint_every_n_epochs_and_on_improvement(tmp_path):
    X, y = _data()
    every = cb.ModelCheckpoint(tmp_path / "every-{epoch}.npz", every=2)
    best = cb.ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy")
    weights = cb.ModelCheckpoint(tmp_path / "w-{epoch:02d}-{loss:.3f}.npz", weights_only=True)
    snapshots = []
    net = _net()
    history = net.fit(X, y, **FIT, validation_data=(X[:80], y[:80]), callbacks=[
        every, best, weights, cb.LambdaCallback(on_epoch_end=lambda run, epoch, logs: snapshots.append(_params(net)))])
    assert sorted(p.name for p in tmp_path.glob("every-*")) == ["every-2.npz", "every-4.npz", "every-6.npz"]
    for epoch in (2, 4, 6):
        np.testing.assert_array_equal(_params(gn.MLP.load(tmp_path / f"every-{epoch}.npz")), snapshots[epoch - 1])
    best_epoch = int(np.argmax(history["val_accuracy"]))       # the first best: later ties do not improve
    np.testing.assert_array_equal(_params(gn.MLP.load(tmp_path / "best.npz")), snapshots[best_epoch])
    assert len(list(tmp_path.glob("w-*"))) == 6 and weights.last_path.endswith(f"{history['loss'][-1]:.3f}.npz")
    assert not list(tmp_path.glob(".gpunet-*"))        # atomic writes leave no temporary behind
    with pytest.raises(ValueError, match="does not exist"):
        cb.ModelCheckpoint(tmp_path / "missing" / "x.npz")
    with pytest.raises(ValueError, match="monitors 'val_loss', which this fit does not record"):
        _net().fit(X, y, **FIT, callbacks=[cb.ModelCheckpoint(tmp_path / "v.npz", monitor="val_loss")])


def test_csv_logger_writes_a_row_an_epoch_and_appends_on_resume(tmp_path):
    X, y = _data()
    log = tmp_path / "log.csv"
    net = _net()
    net.fit(X, y, epochs=3, batch_size=32, lr=0.05, verbose=0, callbacks=[
        cb.CSVLogger(log), cb.ModelCheckpoint(tmp_path / "ck.npz")])
    resumed = _net()
    history = resumed.fit(X, y, epochs=5, batch_size=32, lr=0.05, verbose=0, resume_from=tmp_path / "ck.npz",
                          callbacks=[cb.CSVLogger(log, append=True)])
    with open(log, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["epoch", "loss", "accuracy", "lr", "time"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    assert [float(r[1]) for r in rows[1:]] == history["loss"]


# ---- progress ----------------------------------------------------------------------------------------
def test_verbose_levels(capsys, monkeypatch):
    X, y = _data()
    _net().fit(X, y, epochs=2, verbose=0)
    assert capsys.readouterr().err == ""
    _net().fit(X, y, epochs=2, progress=False)
    assert capsys.readouterr().err == ""
    _net().fit(X, y, epochs=3, verbose=2)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    _net().fit(X, y, epochs=2)                         # "auto" where no bar can be drawn: lines
    assert len(capsys.readouterr().err.splitlines()) == 2
    _net().fit(X, y, epochs=2, verbose=1)              # asks for a bar, cannot have one: lines
    assert len(capsys.readouterr().err.splitlines()) == 2
    stream = io.StringIO()
    _net().fit(X, y, epochs=2, verbose=0, callbacks=[cb.EpochLogger(stream)])
    assert stream.getvalue().count("epoch ") == 2
    with pytest.raises(ValueError, match="verbose must be 0, 1, 2 or 'auto'"):
        _net().fit(X, y, verbose=3)


def test_a_notebook_kernel_gets_a_bar(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm draws the bar")

    class ZMQInteractiveShell:        # what IPython's get_ipython() returns in a Jupyter kernel
        pass
    fake = type(sys)("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert cb.bar_can_be_drawn()
    assert isinstance(cb.progress_callback("auto"), cb.ProgressBar)
    monkeypatch.delitem(sys.modules, "IPython")
    assert isinstance(cb.progress_callback("auto"), cb.EpochLogger)


def test_progress_reads_nothing_back_per_step():
    """The progress callbacks have no batch hook: a fit with them keeps its graph path and
    its once-an-epoch reads."""
    assert not cb.wants_batch_hooks([cb.EpochLogger(), cb.ProgressBar(), gn.train.History()])
    assert cb.wants_batch_hooks([cb.LambdaCallback(on_batch_end=lambda run, batch, loss: None)])


# ---- checkpoints and resume ----------------------------------------------------------------------
RESUME_CASES = {
    "sgd_nesterov": dict(optimizer=lambda: SGD(lr=0.05, momentum=0.9, nesterov=True)),
    "adam_per_step_cosine": dict(optimizer=lambda: Adam(lr=3e-3), schedule=lambda: CosineDecay(per="step")),
    "rmsprop_warmup": dict(optimizer=lambda: RMSprop(lr=3e-3, momentum=0.5, centered=True),
                           schedule=lambda: LinearWarmup(2, then=CosineDecay())),
    "early_stopping_clip": dict(optimizer=lambda: SGD(lr=0.3, momentum=0.9), clip_norm=lambda: 1.0,
                                early_stopping=lambda: EarlyStopping(monitor="val_loss", patience=3)),
}


def _resumable_fit(case, **extra):
    options = {k: v() for k, v in RESUME_CASES[case].items()}
    X, y = _data()
    Xv, yv = _data(n=80, seed=3)
    net = gn.MLP([6, 16, 8, 2], activation="tanh", weight_decay=1e-3, seed=2)
    history = net.fit(X, y, epochs=9, batch_size=40, verbose=0, validation_data=(Xv, yv), **options, **extra)
    return net, history


@pytest.mark.parametrize("case", list(RESUME_CASES))
@pytest.mark.parametrize("at", [1, 4])
def test_a_resumed_fit_ends_where_the_uninterrupted_fit_ends(tmp_path, case, at):
    whole, history = _resumable_fit(case, callbacks=[cb.ModelCheckpoint(tmp_path / "ck-{epoch}.npz")])
    resumed, resumed_history = _resumable_fit(case, resume_from=tmp_path / f"ck-{at}.npz")
    assert _params(resumed).tobytes() == _params(whole).tobytes()
    assert _figures(resumed_history) == _figures(history)
    assert (resumed_history.stopped_epoch, resumed_history.best_epoch) == (history.stopped_epoch, history.best_epoch)
    # the shuffles continue too: a further epoch of each draws the same order
    assert resumed.shuffle_rng.integers(1 << 30) == whole.shuffle_rng.integers(1 << 30)


def test_resume_refuses_what_cannot_continue(tmp_path):
    X, y = _data()
    net = _net()
    net.fit(X, y, epochs=3, batch_size=32, lr=0.05, verbose=0, optimizer="adam",
            callbacks=[cb.ModelCheckpoint(tmp_path / "ck.npz")])
    fresh = _net()
    before = _params(fresh)
    cases = [
        (dict(epochs=2, optimizer="adam"), "has done 3 epoch"),
        (dict(epochs=5, optimizer="sgd"), "used the optimizer Adam, this one SGD"),
        (dict(epochs=5, optimizer="adam", early_stopping=EarlyStopping(monitor="loss")), "had 0 early stopping"),
    ]
    for options, match in cases:
        with pytest.raises(ValueError, match=match):
            fresh.fit(X, y, batch_size=32, verbose=0, resume_from=tmp_path / "ck.npz", **options)
    with pytest.raises(ValueError, match="differs from this one in sizes"):
        gn.MLP([6, 8, 2]).fit(X, y, epochs=5, optimizer="adam", resume_from=tmp_path / "ck.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes((tmp_path / "ck.npz").read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable gpunet checkpoint"):
        fresh.fit(X, y, epochs=5, optimizer="adam", resume_from=corrupt)
    with pytest.raises(FileNotFoundError):
        fresh.fit(X, y, epochs=5, optimizer="adam", resume_from=tmp_path / "nothing.npz")
    np.testing.assert_array_equal(_params(fresh), before)
    loaded = gn.MLP.load(tmp_path / "ck.npz")            # a checkpoint's model loads as a model
    np.testing.assert_array_equal(_params(loaded), _params(net))


# ---- interrupts ---------------------------------------------------------------------------------------
def _interrupt_at(epoch, batch, how="signal"):
    def hook(run, index, loss):
        if run.epoch == epoch and index == batch:
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise KeyboardInterrupt
    return cb.LambdaCallback(on_batch_end=hook)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_stops_at_a_step_boundary_keeps_the_history_and_resumes(tmp_path):
    X, y = _data()
    whole, history = _resumable_fit("adam_per_step_cosine")
    steps = []
    with pytest.raises(TrainingInterrupted) as info:
        _resumable_fit("adam_per_step_cosine", callbacks=[
            cb.ModelCheckpoint(tmp_path / "ck-{epoch}.npz"), _interrupt_at(4, 2),
            cb.LambdaCallback(on_batch_end=lambda run, b, loss: steps.append((run.epoch, b)))])
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.history.epochs == 4 and info.value.epoch == 4
    assert _figures(info.value.history) == {k: v[:4] for k, v in _figures(history).items()}
    assert steps[-1] == (4, 2)              # the step in flight finished, no later one started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed, resumed_history = _resumable_fit("adam_per_step_cosine", resume_from=tmp_path / "ck-4.npz")
    assert _params(resumed).tobytes() == _params(whole).tobytes()


def test_an_interrupt_keeps_the_best_epoch_with_early_stopping():
    X, y = _data()
    snapshots = []
    net = gn.MLP([6, 16, 8, 2], activation="tanh", weight_decay=1e-3, seed=2)
    with pytest.raises(TrainingInterrupted, match="keeps the parameters of its best epoch") as info:
        net.fit(X, y, epochs=9, batch_size=40, verbose=0, validation_data=_data(n=80, seed=3), lr=0.05,
                early_stopping=EarlyStopping(monitor="val_loss", patience=5),
                callbacks=[_interrupt_at(5, 1, how="raise"),
                           cb.LambdaCallback(on_epoch_end=lambda run, e, logs: snapshots.append(_params(net)))])
    best = info.value.history.best_epoch
    np.testing.assert_array_equal(_params(net), snapshots[best - 1])


def test_the_cli_exits_130_with_one_line(monkeypatch, capsys):
    from gpunet.cli import main

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("stopped", gn.train.History(loss=[0.5, 0.4]), 2)
    monkeypatch.setattr(gn.MLP, "fit", interrupted)
    assert main(["train", "--dataset", "spirals", "--epochs", "5"]) == 130
    err = capsys.readouterr().err
    assert err == "gpunet train: interrupted after 2 complete epoch(s)\n"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_to_the_command(tmp_path):
    env = dict(os.environ, GPUNET_BACKEND="numpy", PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-m", "gpunet.cli", "train", "--dataset", "spirals", "--epochs",
                              "100000", "--hidden", "8", "--save", str(tmp_path / "m.npz")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = child.stderr.readline()                  # the first epoch line: training runs
    assert first.startswith("epoch"), first
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("gpunet train: interrupted after ") and "Traceback" not in err


def test_output_paths_are_checked_before_training(capsys, tmp_path):
    from gpunet.cli import main
    assert main(["train", "--dataset", "spirals", "--save", ""]) == 2
    assert "--save needs a file name" in capsys.readouterr().err
    assert main(["train", "--dataset", "spirals", "--save", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "that is a folder" in captured.err and "trained" not in captured.out


# ---- divergence --------------------------------------------------------------------------------------
def test_after_a_divergence_the_model_keeps_the_epoch_start_parameters():
    X, y = _data()
    X = X * 50
    starts = []
    net = _net()
    with pytest.raises(TrainingDiverged, match="keeps the parameters it had") as info:
        net.fit(X, y, epochs=50, batch_size=32, lr=5.0, momentum=0.99, verbose=0,
                callbacks=[cb.LambdaCallback(on_epoch_begin=lambda run, e: starts.append(_params(net)))])
    # the epoch's start when its outputs are finite, else the parameters from before the fit
    kept = starts[-1] if "at the start of epoch" in str(info.value) else starts[0]
    np.testing.assert_array_equal(_params(net), kept)
    assert np.isfinite(gn.to_numpy(net.forward(X))).all()


def test_after_a_late_divergence_the_epoch_start_is_kept():
    X, y = _data()
    starts = []
    net = _net()

    def blow_up(run, epoch):               # two good epochs, then a rate that diverges at once
        starts.append(_params(net))
        if epoch == 2:
            run.optimizer.lr = 1e30
    with pytest.raises(TrainingDiverged, match="keeps the parameters it had at the start of epoch 3"):
        net.fit(X, y, epochs=10, batch_size=32, verbose=0, optimizer=SGD(lr=0.05),
                callbacks=[cb.LambdaCallback(on_epoch_begin=blow_up)])
    np.testing.assert_array_equal(_params(net), starts[2])
    assert np.isfinite(gn.to_numpy(net.forward(X))).all()


def test_after_a_divergence_early_stopping_keeps_the_best_epoch():
    X, y = _data()
    ends = []
    net = _net()

    def blow_up(run, epoch):               # three good epochs, then a rate that diverges
        if epoch == 3:
            run.optimizer.lr = 1e30
    with pytest.raises(TrainingDiverged, match="keeps the parameters of its best epoch") as info:
        net.fit(X, y, epochs=10, batch_size=32, verbose=0, optimizer=SGD(lr=0.05),
                early_stopping=EarlyStopping(monitor="loss", patience=10),
                callbacks=[cb.LambdaCallback(on_epoch_begin=blow_up,
                                             on_epoch_end=lambda run, e, logs: ends.append(_params(net)))])
    assert "best epoch (3)" in str(info.value)
    np.testing.assert_array_equal(_params(net), ends[2])


# ---- optimizer arguments -------------------------------------------------------------------------------
def test_an_optimizer_object_with_contradicting_arguments_is_refused():
    X, y = _data()
    net = _net()
    with pytest.raises(ValueError, match=r"fit got lr=-1.0 and the optimizer object Adam"):
        net.fit(X, y, optimizer=Adam(), lr=-1.0)
    with pytest.raises(ValueError, match=r"fit got momentum=5.0"):
        net.fit(X, y, optimizer=SGD(lr=0.1), momentum=5.0)
    net.fit(X, y, epochs=1, optimizer=SGD(lr=0.1, momentum=0.9), lr=0.1, momentum=0.9, verbose=0)   # agreeing
    with pytest.raises(ValueError, match="eps"):
        RMSprop(eps=0)
    with pytest.raises(ValueError, match="eps"):
        Adam(eps=0)
