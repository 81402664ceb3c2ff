"""Data-parallel steps on 1, 2 and 3 ranks of this machine (``mpiexec``, MPI over loopback):
the global batch stays 1024 rows of a 784-1024-1024-10 network (128 rows of 64-128-10 in the
smoke run), each rank computing its shard and the gradient summed across ranks once a step.
``extra_info`` holds the median step time and the all-reduce's share of it; the timed
figure is the whole job (start-up included), so read the step and share columns. On a
machine with fewer cores than ranks the ranks share cores, and a step does not get faster.
docs/distributed.md gives the arithmetic for GPUs over NVLink and InfiniBand.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchsupport import Size, describe, mlp_step_flops

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'gpunet[mpi]')")

HERE = Path(__file__).resolve().parent


def _job(ranks, widths, batch, steps):
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpiexec is None:
        pytest.skip("no mpiexec on PATH (pip install 'gpunet[mpi]')")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(HERE / "distributed_steps.py"),
                           "-".join(map(str, widths)), str(batch), str(steps)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_distributed_steps(benchmark, request, backend, ranks):
    if backend.name != "numpy":
        pytest.skip("the distributed case runs MPI ranks on the CPU; NCCL on GPUs awaits a lent machine")
    smoke = request.config.getoption("benchmark_disable")
    widths, batch, steps = ((64, 128, 10), 128, 4) if smoke else ((784, 1024, 1024, 10), 1024, 20)
    result = {}

    def job():
        result.update(_job(ranks, widths, batch, steps))
    benchmark.pedantic(job, rounds=1, iterations=1)
    assert result["ranks"] == ranks and result["step"] > 0
    assert (result["allreduce"] > 0) == (ranks > 1)
    describe(benchmark, case="distributed", impl="gpunet", backend="numpy", device="cpu",
             size=Size("medium", (batch, widths[0])), dtype="float32", flops=mlp_step_flops(widths, batch),
             bound="compute", ranks=ranks, step_time=result["step"], allreduce_time=result["allreduce"],
             allreduce_share=result["share"], widths="-".join(map(str, widths)))
