"""One rank of a data-parallel fit, started by ``mpiexec -n K python worker.py CASE OUT``
(tests/test_distributed.py). Each rank writes its parameters and history to OUT/rank<r>.npz;
the test compares them with the single-process fit of the same case (``single``)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests/: the emulator, cases

CASES = {
    # 20+ steps each: 240 rows at batch 24 is 10 steps an epoch, 3 epochs
    "sgd64": dict(dtype="float64", optimizer="sgd", lr=0.05, momentum=0.9),
    "adam64": dict(dtype="float64", optimizer="adam", lr=3e-3),
    "sgd32": dict(dtype="float32", optimizer="sgd", lr=0.05, momentum=0.9),
    "adam32": dict(dtype="float32", optimizer="adam", lr=3e-3),
    # weights, validation, early stopping, a per-step schedule, clipping, a short last batch
    "everything": dict(dtype="float64", optimizer="adam", lr=3e-3, weights=True, validation=True,
                       early_stopping=True, schedule=True, clip_norm=1.0, n=250),
    "memmap": dict(dtype="float64", optimizer="sgd", lr=0.05, momentum=0.9, memmap=True),
    "regression": dict(dtype="float64", optimizer="sgd", lr=0.02, momentum=0.5, regression=True),
}


SKLEARN_CASES = {
    "sklearn-sgd": dict(solver="sgd", batch_size=24, learning_rate_init=0.05, momentum=0.9, max_iter=5),
    "sklearn-adam": dict(solver="adam", batch_size=25, learning_rate_init=3e-3, max_iter=6, early_stopping=True,
                         n_iter_no_change=3),
    "sklearn-lbfgs": dict(solver="lbfgs", max_iter=30),
}


def sklearn_fit(case, communicator=None):
    """A gpunet.sklearn MLPClassifier, float64, on the classification data with weights."""
    import warnings
    from gpunet.sklearn import MLPClassifier
    X, y, _, _ = data("sgd64")
    w = np.random.default_rng(9).uniform(0.5, 1.5, size=len(y))
    est = MLPClassifier(hidden_layer_sizes=(12,), random_state=0, dtype="float64", backend="numpy",
                        communicator=communicator, **SKLEARN_CASES[case])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y, sample_weight=w)
    return est


def data(case):
    spec = CASES[case]
    rng = np.random.default_rng(5)
    n = spec.get("n", 240)
    X = rng.normal(size=(n, 7))
    if spec.get("regression"):
        y = np.tanh(X[:, :2]).sum(axis=1, keepdims=True)
    else:
        y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    w = rng.uniform(0.2, 2.0, size=n) if spec.get("weights") else None
    Xv, yv = X[:40] * 1.1, y[:40]
    return X, y, w, (Xv, yv)


def fit(case, communicator=None, out=None, rows=None, **changes):
    import gpunet as gn
    from gpunet.callbacks import ModelCheckpoint
    from gpunet.schedules import CosineDecay, EarlyStopping
    spec = {**CASES[case], **changes}
    X, y, w, validation = data(case)
    if rows is not None:                    # a rank that holds fewer examples than the others
        X, y = X[:rows], y[:rows]
    if spec.get("memmap"):
        import tempfile
        path = os.path.join(out or tempfile.mkdtemp(prefix="gpunet-memmap-"), f"X-{os.getpid()}.npy")
        np.save(path, X)
        X = np.load(path, mmap_mode="r")
    regression = spec.get("regression")
    net = gn.MLP([7, spec.get("width", 12), 1 if regression else 2], activation="tanh", dtype=spec["dtype"],
                 seed=spec.get("seed", 3), weight_decay=1e-3, output="identity" if regression else "softmax",
                 loss="mse" if regression else "cross_entropy", backend=spec.get("backend"))
    callbacks = [] if out is None else [ModelCheckpoint(os.path.join(out, "ckpt-{epoch}.npz"))]
    history = net.fit(X, y, epochs=3, batch_size=24, lr=spec["lr"], momentum=spec.get("momentum"),
                      optimizer=spec["optimizer"], sample_weight=w, clip_norm=spec.get("clip_norm"),
                      validation_data=validation if spec.get("validation") else None,
                      early_stopping=EarlyStopping(monitor="val_loss", patience=5) if spec.get("early_stopping")
                      else None,
                      schedule=CosineDecay(per="step") if spec.get("schedule") else None,
                      verbose=2, communicator=communicator, callbacks=callbacks)
    return net, history


def main():
    case, out = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "mpi"
    import gpunet as gn
    from gpunet import distributed
    if mode == "nccl-emulated":
        import emulator.plugin as emulator
        emulator.activate()
        from distributed.fake_nccl import install
        install()
    comm = distributed.MPICommunicator() if mode != "nccl-emulated" else distributed.NCCLCommunicator()
    changes = {}
    if mode == "nccl-emulated":
        changes["backend"] = "cupy"
    trouble = os.environ.get("GPUNET_TEST_TROUBLE", "")
    if trouble == "width" and comm.rank == 1:
        changes["width"] = 13
    if trouble == "seed" and comm.rank == 1:
        changes["seed"] = 4
    rows = None
    if trouble == "rows" and comm.rank == 1:
        rows = len(data(case)[0]) - 1
    if trouble in ("die", "hang"):
        from gpunet.callbacks import LambdaCallback

        def die(run, epoch, logs):
            if comm.rank == 1 and trouble == "die":
                os._exit(7)               # a rank that dies without a word
            if comm.rank == 1:
                import time
                time.sleep(600)           # a rank that stops answering (a hung node)
        import gpunet.train
        original = gpunet.train.check_callbacks
        gpunet.train.check_callbacks = lambda cbs: original([*(cbs or []), LambdaCallback(on_epoch_end=die)])
    if case.startswith("sklearn"):
        est = sklearn_fit(case, comm)
        np.savez(os.path.join(out, f"rank{comm.rank}.npz"),
                 params=np.concatenate([c.ravel() for c in est.coefs_ + est.intercepts_]),
                 history=json.dumps({"n_iter": est.n_iter_, "loss": est.loss_}))
        return
    if trouble in ("stop", "sigint"):
        from gpunet.callbacks import LambdaCallback
        import gpunet.train

        def stop(run, epoch, logs):         # one rank's callback asks to stop after epoch 1
            if comm.rank == 1 and epoch == 0:
                run.stop_training = True

        def sigint(run, batch, loss):       # Ctrl-C reaches one rank in the middle of epoch 2
            if comm.rank == 0 and run.epoch == 1 and batch == 3:
                import signal
                signal.raise_signal(signal.SIGINT)
        hook = LambdaCallback(on_epoch_end=stop) if trouble == "stop" else LambdaCallback(on_batch_end=sigint)
        original = gpunet.train.check_callbacks
        gpunet.train.check_callbacks = lambda cbs: original([*(cbs or []), hook])
    try:
        net, history = fit(case, comm, out, rows=rows, **changes)
    except distributed.DistributedError as exc:
        print(f"rank {comm.rank}: DistributedError: {exc}", flush=True)
        sys.exit(5)
    except KeyboardInterrupt as exc:
        print(f"rank {comm.rank}: interrupted after {len(exc.history['loss'])} epoch(s)", flush=True)
        sys.exit(130)
    np.savez(os.path.join(out, f"rank{comm.rank}.npz"), params=gn.to_numpy(net.flat_params),
             history=json.dumps({k: v for k, v in history.items() if k != "time"}))


if __name__ == "__main__":
    main()
