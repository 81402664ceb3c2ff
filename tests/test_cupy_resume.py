"""Checkpoints and early ends on the GPU path (CuPy; the kernel emulator in CI): a resumed
fit ends bit for bit where the uninterrupted one ends, graphed or eager, from memory or from
a memory map; a diverged fit keeps finite parameters; callbacks without batch hooks add no
host read per step."""
from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import gpunet as gn  # noqa: E402
from gpunet.callbacks import EpochLogger, LambdaCallback, ModelCheckpoint  # noqa: E402
from gpunet.optim import SGD, Adam  # noqa: E402
from gpunet.schedules import CosineDecay, EarlyStopping  # noqa: E402
from gpunet.step_graph import GRAPHS_ENV  # noqa: E402
from gpunet.train import TrainingDiverged  # noqa: E402

pytestmark = pytest.mark.gpu


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def _fit(X, y, **extra):
    net = gn.MLP([10, 24, 2], activation="tanh", seed=3, backend="cupy", weight_decay=1e-3)
    with net.backend.kernel_gemms():          # eager and graphed steps take the same GEMM
        history = net.fit(X, y, epochs=6, batch_size=64, verbose=0, optimizer=Adam(lr=3e-3),
                          schedule=CosineDecay(per="step"), validation_data=_data(64, 1),
                          early_stopping=EarlyStopping(monitor="val_loss", patience=4), **extra)
    return gn.to_numpy(net.flat_params), {k: v for k, v in history.items() if k != "time"}


@pytest.mark.parametrize("graphs", ["0", "1"], ids=["eager", "graphed"])
@pytest.mark.parametrize("source", ["memory", "memmap"])
def test_a_resumed_gpu_fit_ends_where_the_whole_one_ends(monkeypatch, tmp_path, graphs, source):
    monkeypatch.setenv(GRAPHS_ENV, graphs)
    X, y = _data()
    if source == "memmap":
        np.save(tmp_path / "X.npy", X)
        X = np.load(tmp_path / "X.npy", mmap_mode="r")
    whole = _fit(X, y, callbacks=[ModelCheckpoint(tmp_path / "ck-{epoch}.npz")])
    resumed = _fit(X, y, resume_from=tmp_path / "ck-2.npz")
    assert whole[0].tobytes() == resumed[0].tobytes()
    assert whole[1] == resumed[1]


def test_a_diverged_gpu_fit_keeps_finite_parameters(monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "0")
    X, y = _data()
    net = gn.MLP([10, 24, 2], seed=3, backend="cupy")

    def blow_up(run, epoch):
        if epoch == 2:
            run.optimizer.lr = 1e30
    with pytest.raises(TrainingDiverged, match="keeps the parameters it had"):
        net.fit(X, y, epochs=5, batch_size=64, verbose=0, optimizer=SGD(lr=0.05),
                callbacks=[LambdaCallback(on_epoch_begin=blow_up)])
    assert np.isfinite(gn.to_numpy(net.forward(X))).all()


def test_epoch_callbacks_keep_the_graphed_steps(monkeypatch, tmp_path):
    """Progress lines, checkpoints and epoch hooks leave the steps as graph replays (no
    host read between them); a batch hook turns them eager, as documented."""
    import sys
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("graph launches are counted on the host kernel emulator")
    monkeypatch.setenv(GRAPHS_ENV, "1")
    X, y = _data()
    counts = []
    for hooks in ([EpochLogger(), ModelCheckpoint(tmp_path / "ck.npz"), LambdaCallback(on_epoch_end=print)],
                  [LambdaCallback(on_batch_end=lambda run, batch, loss: None)]):
        before = emulator.launch_counts()
        gn.MLP([10, 24, 2], seed=3, backend="cupy").fit(X, y, epochs=3, batch_size=64, lr=0.05, verbose=0,
                                                       callbacks=hooks)
        counts.append((emulator.launch_counts() - before)["graph_launch"])
    assert counts == [11, 0]      # 12 steps: the first eager, then 11 graph launches; with the batch hook none
