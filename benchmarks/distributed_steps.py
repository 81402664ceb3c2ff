"""One rank of the distributed benchmark (benchmarks/test_bench_distributed.py), started by
``mpiexec -n K python distributed_steps.py WIDTHS BATCH STEPS``: times data-parallel fit
steps of a global batch of BATCH rows, and the gradient sums inside them; rank 0 prints the
medians as JSON on its last line."""
from __future__ import annotations

import json
import sys
import time

import numpy as np

import gpunet as gn
from gpunet import distributed
from gpunet.train import TrainingStep, prepare, run_epoch


class TimedSums:
    """The communicator, with the time of each gradient sum noted."""

    def __init__(self, comm):
        self.comm, self.seconds = comm, []

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def allreduce_sum(self, array, backend):
        start = time.perf_counter()
        result = self.comm.allreduce_sum(array, backend)
        self.seconds.append(time.perf_counter() - start)
        return result


def main():
    widths = [int(w) for w in sys.argv[1].split("-")]
    batch, steps = int(sys.argv[2]), int(sys.argv[3])
    comm = distributed.MPICommunicator()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], batch * steps)
    net = gn.MLP(widths, dtype="float32", seed=0, backend="numpy")
    plan = prepare(net, X, y, epochs=2, batch_size=batch, lr=0.01, momentum=0.9, nesterov=None, clip_norm=None,
                   validation_data=None, shuffle=True, progress=False, optimizer=None, schedule=None,
                   early_stopping=None, sample_weight=None, communicator=comm)
    timed = TimedSums(comm)
    plan.comm = timed if comm.size > 1 else None          # one rank: the plain step, no collective
    step = TrainingStep(net, plan.optimizer, plan.clip_norm, communicator=plan.comm)
    run_epoch(net, plan, step, 0)                         # warm: buffers, BLAS threads
    timed.seconds.clear()
    step_times = []
    for epoch in range(1, 3):
        start = time.perf_counter()
        run_epoch(net, plan, step, epoch)
        step_times.append((time.perf_counter() - start) / steps)
    if comm.rank == 0:
        step_time = float(np.median(step_times))
        sums = float(np.median(timed.seconds)) if timed.seconds else 0.0
        print(json.dumps({"ranks": comm.size, "step": step_time, "allreduce": sums,
                          "share": sums / step_time if step_time else 0.0}), flush=True)


if __name__ == "__main__":
    main()
