"""Data-parallel fit over MPI (and the NCCL path on the kernel emulator): ``mpiexec -n K``
runs of tests/distributed/worker.py against the single-process fit with the same global
batch, mismatched ranks refused at start-up, dead or hung ranks ending the job in bounded
time, and rank 0 alone writing and logging."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet.distributed import shard_bounds

pytest.importorskip("mpi4py", reason="mpi4py is needed for the distributed tests (pip install 'gpunet[mpi]')")

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "distributed" / "worker.py"
sys.path.insert(0, str(TESTS / "distributed"))
from worker import CASES, fit, sklearn_fit  # noqa: E402


def _mpiexec():
    found = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip("no mpiexec on PATH (pip install 'gpunet[mpi]' brings MPICH's)")
    return found


def run_ranks(k, case, out, mode="mpi", timeout=240, **env):
    """Run ``case`` on ``k`` ranks; (completed process, per-rank (params, history))."""
    environment = dict(os.environ, GPUNET_BACKEND="numpy", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
                       **env)
    done = subprocess.run([_mpiexec(), "-n", str(k), sys.executable, str(WORKER), case, str(out), mode],
                          capture_output=True, text=True, env=environment, timeout=timeout)
    results = []
    for rank in range(k):
        path = Path(out) / f"rank{rank}.npz"
        if path.exists():
            with np.load(path) as saved:
                results.append((saved["params"], json.loads(str(saved["history"]))))
    return done, results


def _single(case):
    net, history = fit(case)
    return gn.to_numpy(net.flat_params), {k: v for k, v in history.items() if k != "time"}


TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


def _assert_equivalent(case, results, k):
    assert len(results) == k
    params0 = results[0][0]
    for params, history in results[1:]:        # every rank holds the same parameters, bit for bit
        assert params.tobytes() == params0.tobytes()
        assert history == results[0][1]
    single_params, single_history = _single(case)
    tol = TOLERANCE[CASES[case]["dtype"]]
    np.testing.assert_allclose(params0, single_params, **tol)
    for key, values in single_history.items():
        np.testing.assert_allclose(results[0][1][key], values, **tol, err_msg=key)


def test_shards_cover_a_batch_once():
    for rows in (1, 2, 5, 24, 25):
        for size in (1, 2, 3, 4):
            parts = [shard_bounds(rows, size, r) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


@pytest.mark.parametrize("case, k", [("sgd64", 2), ("adam64", 2), ("sgd32", 2), ("adam32", 2), ("sgd64", 3),
                                     ("adam64", 3), ("adam32", 3)])
def test_k_ranks_fit_as_one_process_with_the_global_batch(tmp_path, case, k):
    """30 steps (3 epochs of 10), local batches of 24/k rows (8/8/8 or 12/12)."""
    done, results = run_ranks(k, case, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _assert_equivalent(case, results, k)


@pytest.mark.parametrize("case, k", [("everything", 2), ("everything", 3), ("memmap", 2), ("regression", 3)])
def test_weights_validation_early_stopping_schedules_and_memmaps_keep_their_meaning(tmp_path, case, k):
    """Weighted shares, a per-step schedule, clipping, early stopping on the validation loss,
    a last batch of 10 rows, a memory map read by each rank, a regressor's R^2."""
    done, results = run_ranks(k, case, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _assert_equivalent(case, results, k)


def test_two_runs_agree_bit_for_bit(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    runs = [run_ranks(3, "adam32", out)[1] for out in (first, second)]
    assert runs[0][0][0].tobytes() == runs[1][0][0].tobytes()
    assert runs[0][0][1] == runs[1][0][1]


def test_rank_0_alone_logs_and_writes(tmp_path):
    done, _ = run_ranks(3, "sgd64", tmp_path)
    assert done.returncode == 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]      # once, not once a rank
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-1.npz", "ckpt-2.npz", "ckpt-3.npz"]
    # the checkpoint is the ranks' common state: a single process resumes it to the same end
    net, _ = fit("sgd64")
    resumed = gn.MLP.load(tmp_path / "ckpt-3.npz")
    np.testing.assert_allclose(gn.to_numpy(resumed.flat_params), gn.to_numpy(net.flat_params), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("trouble, message", [
    ("width", "the ranks differ in the model's sizes: rank 0: [7, 12, 2]; rank 1: [7, 13, 2]"),
    ("seed", "the ranks differ in the model's seed: rank 0: 3; rank 1: 4"),
    ("rows", "the ranks differ in the number of examples: rank 0: 240; rank 1: 239"),
])
def test_mismatched_ranks_stop_at_start_up_naming_the_difference(tmp_path, trouble, message):
    started = time.monotonic()
    done, results = run_ranks(2, "sgd64", tmp_path, GPUNET_TEST_TROUBLE=trouble)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and not results
    assert output.count(message) == 2, output[-3000:]     # both ranks, the same words
    assert "epoch 1/3" not in output                      # nothing trained
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("trouble", ["die", "hang"])
def test_a_dead_or_hung_rank_ends_the_job_in_bounded_time(tmp_path, trouble):
    started = time.monotonic()
    done, results = run_ranks(3, "sgd64", tmp_path, timeout=120, GPUNET_TEST_TROUBLE=trouble,
                              GPUNET_DIST_TIMEOUT="3")
    elapsed = time.monotonic() - started
    assert done.returncode != 0 and len(results) < 3
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"
    if trouble == "hang":       # the others' deadline, not the launcher, ended it
        assert "did not complete within 3 s; another rank has died or stopped" in done.stdout + done.stderr


def test_a_stream_or_a_wrong_communicator_is_refused():
    from gpunet.data import BatchStream
    from gpunet.distributed import Communicator
    net = gn.MLP([7, 4, 2])
    X = np.zeros((8, 7))
    with pytest.raises(TypeError, match="communicator must be a gpunet.distributed.Communicator"):
        net.fit(X, np.zeros(8, np.int64), communicator=object())
    with pytest.raises(TypeError, match="a BatchStream is not sharded"):
        net.fit(BatchStream([(X, np.zeros(8, np.int64))]), communicator=Communicator())


@pytest.mark.gpu
def test_the_nccl_path_on_the_emulator(tmp_path):
    """NCCLCommunicator on the emulator's CuPy: device pointers, dtypes, the current stream and
    the once-an-epoch wait as on GPUs, the sum itself by MPI (tests/distributed/fake_nccl.py)."""
    if "emulator.plugin" not in sys.modules:
        pytest.skip("the NCCL path is exercised on the host kernel emulator (a real GPU run needs NCCL and GPUs)")
    done, results = run_ranks(2, "sgd64", tmp_path, mode="nccl-emulated", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results[0][0].tobytes() == results[1][0].tobytes()
    single_params, _ = _single("sgd64")
    np.testing.assert_allclose(results[0][0], single_params, rtol=1e-10, atol=1e-10)


def test_the_readme_command_trains_on_two_ranks(tmp_path):
    """``mpiexec -n 2 gpunet train --distributed``: one report (rank 0), one model file, the
    accuracy of the single-process run."""
    env = dict(os.environ, GPUNET_BACKEND="numpy", OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS.parent))
    model = tmp_path / "digits.npz"
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "gpunet.cli", "train", "--distributed",
                           "mpi", "--epochs", "8", "--no-progress", "--save", str(model)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("test accuracy:") == 1 and "rank 0 of 2 (mpi)" in done.stdout
    accuracy = float(done.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.95
    assert gn.MLP.load(model).sizes == [64, 256, 10]


@pytest.mark.parametrize("case, k", [("sklearn-sgd", 2), ("sklearn-adam", 3), ("sklearn-lbfgs", 2)])
def test_the_estimators_fit_as_one_process(tmp_path, case, k):
    """MLPClassifier(communicator=...): sharded minibatches with sample weights, early stopping
    on its validation split, and L-BFGS over the ranks' rows end where one process ends."""
    pytest.importorskip("sklearn", reason="the estimators need scikit-learn")
    done, results = run_ranks(k, case, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for params, record in results[1:]:
        assert params.tobytes() == results[0][0].tobytes() and record == results[0][1]
    single = sklearn_fit(case)
    expected = np.concatenate([c.ravel() for c in single.coefs_ + single.intercepts_])
    assert results[0][1]["n_iter"] == single.n_iter_
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(results[0][1]["loss"], single.loss_, rtol=1e-9)


def test_the_ranks_stop_together(tmp_path):
    """One rank's callback stopping, or Ctrl-C reaching one rank mid-epoch: every rank stops at
    the same epoch's end, none waits for a peer that left."""
    done, results = run_ranks(3, "sgd64", tmp_path, GPUNET_TEST_TROUBLE="stop", GPUNET_DIST_TIMEOUT="20")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [len(history["loss"]) for _, history in results] == [1, 1, 1]
    (tmp_path / "sigint").mkdir()
    done, results = run_ranks(2, "sgd64", tmp_path / "sigint", GPUNET_TEST_TROUBLE="sigint", GPUNET_DIST_TIMEOUT="20")
    output = done.stdout + done.stderr
    # the epoch it arrived in completes on both ranks (and is recorded), then both stop
    assert done.returncode == 130 and output.count("interrupted after 2 epoch(s)") == 2, output[-3000:]
