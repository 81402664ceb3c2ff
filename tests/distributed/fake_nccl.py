"""A stand-in for ``cupy.cuda.nccl`` on the host kernel emulator, where there is no GPU and
no NCCL: the same calls gpunet's ``NCCLCommunicator`` makes, the sum done by MPI on the
emulator's device arrays (host memory, reached through the pointer NCCL would get). Every
other part of the NCCL path (device pointers, dtypes, the current stream, the once-an-epoch
wait) runs as it would on GPUs."""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np

CALLS: list = []


def install():
    import cupy
    from mpi4py import MPI

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 7, 8, 0
    c_types = {7: ctypes.c_float, 8: ctypes.c_double}
    nccl.get_unique_id = lambda: (b"emulated",) * 1

    class NcclCommunicator:
        def __init__(self, ndev, uid, rank):
            assert uid == (b"emulated",) and 0 <= rank < ndev == MPI.COMM_WORLD.Get_size()
            self.rank = rank

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            assert sendbuf == recvbuf and op == nccl.NCCL_SUM     # gpunet sums in place
            CALLS.append((count, datatype, stream))
            values = np.ctypeslib.as_array((c_types[datatype] * count).from_address(recvbuf))
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)

        def abort(self):
            pass

    nccl.NcclCommunicator = NcclCommunicator
    cupy.cuda.nccl = nccl
    sys.modules["cupy.cuda.nccl"] = nccl
