"""Data-parallel training across processes: one communicator, over MPI or NCCL.

gpunet keeps a model's gradients in one flat buffer, so data parallelism needs one
collective per step: every rank computes the gradient of its shard of the global batch, the
shards' gradients are summed across ranks (each scaled by its share of the batch's rows, or
of its weight), and every rank applies the same update to the same parameters.

- ``MPICommunicator`` (mpi4py; ``pip install "gpunet[mpi]"`` brings mpi4py and MPICH from
  wheels, so ``mpiexec -n 2 python train.py`` works on a fresh machine): sums host arrays,
  and device arrays through a host copy.
- ``NCCLCommunicator`` (CuPy's ``cupy.cuda.nccl``, between GPUs; ``pip install
  "gpunet[nccl]"``): sums device arrays on the current stream, no host copy; the NCCL
  unique id is shared over MPI, which also carries the few host-side exchanges.

``init()`` picks one (``"auto"``: NCCL for a CuPy model where it is installed, else MPI).
``fit(..., communicator=comm)`` then trains data-parallel (``gpunet.train``): every rank
passes the same data and arguments; start-up compares them across ranks and names any
difference; rank 0 alone shows progress and writes files (``is_main``).

A collective that does not complete within ``timeout`` seconds (default 300, or
``GPUNET_DIST_TIMEOUT``) raises ``DistributedError`` (and aborts the MPI job), so a rank
that dies makes the others stop instead of hang.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "DistributedError", "init", "shard_bounds",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0
_POLL_SECONDS = 1e-4


class DistributedError(RuntimeError):
    """The ranks disagree about the run, or a collective did not complete (a rank died)."""


def _timeout_from_env(timeout):
    if timeout is not None:
        return float(timeout)
    text = os.environ.get("GPUNET_DIST_TIMEOUT", "").strip()
    return float(text) if text else DEFAULT_TIMEOUT


def _wait_until(done, comm, what):
    """Poll ``done()`` until ``comm.timeout`` seconds have passed; past them ``comm.abort`` the
    job and raise: a collective that does not finish means a peer has died or hung."""
    deadline = time.monotonic() + comm.timeout
    while not done():
        if time.monotonic() > deadline:
            why = (f"gpunet.distributed: rank {comm.rank}: {what} did not complete within {comm.timeout:g} s; "
                   "another rank has died or stopped")
            comm.abort(why)
            raise DistributedError(why)
        time.sleep(_POLL_SECONDS)


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """The rows of a global batch that one rank takes.

    As even as they come: the first ``rows % size`` ranks take one more (a rank may get none).

    Parameters
    ----------
    rows : int
        The global batch's rows.
    size : int
        The number of ranks.
    rank : int
        This rank.

    Returns
    -------
    (int, int)
        ``lo, hi``: the rank takes rows ``lo`` to ``hi - 1`` of the batch.
    """
    base, extra = divmod(rows, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Communicator:
    """What data-parallel ``fit`` needs of a transport.

    ``rank``, ``size``, an in-place sum of an array across ranks, and small host exchanges
    (``allgather`` of picklable values). This base is the one-process case's shape."""

    rank: int = 0
    size: int = 1
    name = "communicator"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that shows progress and writes files.

        Returns
        -------
        bool
            True on rank 0.
        """
        return self.rank == 0

    def allreduce_sum(self, array: Any, backend: Any) -> Any:
        """Sum ``array`` across ranks, in place (every rank gets the sum).

        Parameters
        ----------
        array : backend array
            The rank's values; contiguous.
        backend : gpunet backend
            The backend the array lives on.

        Returns
        -------
        backend array
            ``array``, now the sum.
        """
        raise NotImplementedError

    def allgather(self, value: Any) -> list:
        """Every rank's ``value``, in rank order (small picklable values).

        Parameters
        ----------
        value : object
            This rank's value.

        Returns
        -------
        list
            One value per rank.
        """
        raise NotImplementedError

    def abort(self, why: str) -> None:
        """End the whole job after an unrecoverable error on this rank.

        Parameters
        ----------
        why : str
            What went wrong (printed by the launcher where it can).
        """

    def check_same(self, facts: dict) -> None:
        """Refuse a run whose ranks differ in any of ``facts``, compared in one exchange.

        Parameters
        ----------
        facts : dict
            What each value is (for the message) -> this rank's value (picklable, comparable).

        Raises
        ------
        DistributedError
            The ranks differ; every rank raises with the same message, naming the first fact
            (in ``facts``' order) that differs and each rank's value of it.
        """
        gathered = self.allgather(list(facts.values()))
        for i, what in enumerate(facts):
            values = [rank_facts[i] for rank_facts in gathered]
            if any(v != values[0] for v in values):
                shown = "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                raise DistributedError(f"the ranks differ in {what}: {shown}")


class MPICommunicator(Communicator):
    """Collectives over MPI (mpi4py): ``MPICommunicator()`` uses ``MPI.COMM_WORLD``.

    Device arrays are summed through a host copy (one each way per step); for GPUs use
    ``NCCLCommunicator``. Every collective is a non-blocking one waited on with a deadline.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``).
    timeout : float, optional
        Seconds a collective may take before the job is aborted (default
        ``GPUNET_DIST_TIMEOUT`` or 300).

    Raises
    ------
    ImportError
        mpi4py is not installed.
    """

    name = "mpi"

    def __init__(self, comm: Any = None, timeout: float | None = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(f"gpunet.distributed over MPI needs mpi4py ({exc}): pip install 'gpunet[mpi]'") \
                from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = _timeout_from_env(timeout)
        self._host = {}

    def _wait(self, request, what):
        """Wait for ``request`` until the deadline; past it, abort the job (a peer is gone)."""
        _wait_until(request.Test, self, what)

    def allreduce_sum(self, array: Any, backend: Any) -> Any:
        """Sum ``array`` across ranks, in place (device arrays through a host buffer).

        Parameters
        ----------
        array : backend array
            The rank's values; contiguous.
        backend : gpunet backend
            The backend the array lives on.

        Returns
        -------
        backend array
            ``array``, now the sum.

        Raises
        ------
        DistributedError
            The sum did not complete in time.
        """
        if isinstance(array, np.ndarray):
            self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM), "a gradient sum")
            return array
        key = (array.shape, array.dtype.str)
        host = self._host.get(key)
        if host is None:
            host = self._host[key] = np.empty(array.shape, array.dtype)
        host[...] = backend.to_numpy(array)
        self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM), "a gradient sum")
        backend.copy_to_device(array, host)
        return array

    def allgather(self, value: Any) -> list:
        """Every rank's ``value``, in rank order.

        Parameters
        ----------
        value : object
            This rank's value (picklable).

        Returns
        -------
        list
            One value per rank.

        Raises
        ------
        DistributedError
            The exchange did not complete in time.
        """
        # an object collective has no non-blocking form: a barrier with a deadline first
        self._wait(self.comm.Ibarrier(), "a start-up exchange")
        return self.comm.allgather(value)

    def abort(self, why: str) -> None:
        """End the whole MPI job (``MPI_Abort``) after printing ``why``.

        Parameters
        ----------
        why : str
            What went wrong.
        """
        print(why, flush=True)
        self.comm.Abort(3)


class NCCLCommunicator(Communicator):
    """Gradient sums between GPUs over NCCL (CuPy's ``cupy.cuda.nccl``), set up over MPI.

    The NCCL unique id is made on rank 0 and broadcast over MPI; each rank uses the CUDA
    device ``device`` (default: its rank modulo the node's devices). The sum runs on the
    current stream with no host copy; small host exchanges go over MPI.

    Parameters
    ----------
    mpi : MPICommunicator, optional
        The MPI side (default ``MPICommunicator()``).
    device : int, optional
        The CUDA device of this rank.

    Raises
    ------
    ImportError
        CuPy's NCCL bindings are not available (``pip install 'gpunet[nccl]'``).
    """

    name = "nccl"

    def __init__(self, mpi: MPICommunicator | None = None, device: int | None = None) -> None:
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise ImportError(f"gpunet.distributed over NCCL needs CuPy with NCCL ({exc}): "
                              "pip install 'gpunet[nccl]'") from None
        self._cupy, self._nccl = cupy, nccl
        self.mpi = MPICommunicator() if mpi is None else mpi
        self.rank, self.size = self.mpi.rank, self.mpi.size
        self.timeout = self.mpi.timeout
        if device is None:
            device = self.rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(device).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._event = None

    _NCCL_TYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}

    def allreduce_sum(self, array: Any, backend: Any) -> Any:
        """Sum a device ``array`` across ranks in place, on the current stream.

        Parameters
        ----------
        array : cupy.ndarray
            The rank's values; contiguous, float32 or float64.
        backend : gpunet backend
            The CuPy backend.

        Returns
        -------
        cupy.ndarray
            ``array``, now the sum (once the stream reaches it).

        Raises
        ------
        TypeError
            Another dtype.
        DistributedError
            The sum did not complete in time (NCCL is aborted).
        """
        nccl, cupy = self._nccl, self._cupy
        kind = self._NCCL_TYPES.get(array.dtype.name)
        if kind is None:
            raise TypeError(f"NCCL sums float32 or float64 here, got {array.dtype}")
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, getattr(nccl, kind), nccl.NCCL_SUM,
                            stream.ptr)
        return array

    def wait(self) -> None:
        """Wait, with the deadline, for the sums queued so far.

        Called once an epoch, so a dead peer is noticed without a host synchronisation per
        step.

        Raises
        ------
        DistributedError
            They did not complete in time (NCCL is aborted).
        """
        cupy = self._cupy
        if self._event is None:
            self._event = cupy.cuda.Event(disable_timing=True)
        self._event.record()
        _wait_until(lambda: self._event.done, self, "NCCL sums")

    def allgather(self, value: Any) -> list:
        """Every rank's ``value``, over MPI.

        Parameters
        ----------
        value : object
            This rank's value (picklable).

        Returns
        -------
        list
            One value per rank.
        """
        return self.mpi.allgather(value)

    def abort(self, why: str) -> None:
        """Abort NCCL and the MPI job.

        Parameters
        ----------
        why : str
            What went wrong.
        """
        self.comm.abort()
        self.mpi.abort(why)


def init(transport: str = "auto", backend: Any = None, timeout: float | None = None) -> Communicator:
    """The communicator of this process's rank.

    Parameters
    ----------
    transport : {"auto", "mpi", "nccl"}, default "auto"
        "auto": NCCL when ``backend`` (default: the active one) is CuPy and NCCL is
        available, else MPI.
    backend : str or backend, optional
        The backend the models will use.
    timeout : float, optional
        Seconds a collective may take (default ``GPUNET_DIST_TIMEOUT`` or 300).

    Returns
    -------
    Communicator
        An ``MPICommunicator`` or ``NCCLCommunicator``.

    Raises
    ------
    ValueError
        An unknown transport.
    ImportError
        The transport's package is missing.
    """
    from .backend import resolve_backend
    if transport not in ("auto", "mpi", "nccl"):
        raise ValueError(f"transport must be 'auto', 'mpi' or 'nccl', got {transport!r}")
    mpi = MPICommunicator(timeout=timeout)
    if transport == "mpi":
        return mpi
    on_gpu = not resolve_backend(backend).host_reads_are_free     # arrays on a device: NCCL can sum them there
    if transport == "nccl" or on_gpu:
        try:
            return NCCLCommunicator(mpi)
        except ImportError:
            if transport == "nccl":
                raise
    return mpi


def fingerprint(array: Any, rows: int = 64) -> str:
    """A short hash of an array's shape, dtype and a sample of its rows (start-up checks).

    Parameters
    ----------
    array : array-like
        Host data (a memory map is read only where sampled).
    rows : int, default 64
        How many rows, spread over the array, enter the hash.

    Returns
    -------
    str
        16 hex digits.
    """
    arr = np.asarray(array) if not hasattr(array, "shape") else array
    digest = hashlib.sha256(f"{arr.shape}|{getattr(arr, 'dtype', '')}".encode())
    n = arr.shape[0] if arr.ndim else 0
    if n:
        picks = np.unique(np.linspace(0, n - 1, min(rows, n)).astype(np.int64))
        digest.update(np.ascontiguousarray(np.asarray(arr[picks])).tobytes())
    return digest.hexdigest()[:16]


def params_hash(flat_params: Any, backend: Any) -> str:
    """The hash the ranks compare after each epoch: every parameter's bytes.

    Parameters
    ----------
    flat_params : backend array
        A model's flat parameters.
    backend : gpunet backend
        Their backend.

    Returns
    -------
    str
        16 hex digits.
    """
    return hashlib.sha256(np.ascontiguousarray(backend.to_numpy(flat_params)).tobytes()).hexdigest()[:16]
