"""Sharing one model between threads: readers of its parameters, their writer, and fit's claim.

``ParameterGuard`` lets any number of readers (inference, ``loss_and_grad``) work at once,
each with its own buffers, and lets one writer (an optimizer update in ``fit``,
``set_flat_params``, restoring the best epoch) change the parameters while no reader is
inside: a reader sees the parameters between two updates, never part of one. Writers are
preferred, so a stream of predictions cannot stall training indefinitely, and the BLAS or
GPU work of the readers runs side by side (the lock is only held around it, not taken
inside it).

On a GPU, holding the lock while work is *queued* orders it only for threads that share a
CUDA stream (CuPy's default); for readers and writers on different streams the guard also
orders the device work: a reader's stream waits for the last update's stream, and a
writer's stream waits for the streams that read since the last update (see the backends'
``wait_for_stream``). On the CPU there are no streams and this costs nothing.

``ExclusiveClaim`` is ``fit``'s claim on its model: a second ``fit`` of the same model, from
any thread, is refused with a RuntimeError instead of interleaving two trainings.
"""
from __future__ import annotations

import contextlib
import threading

__all__ = ["ParameterGuard", "ExclusiveClaim"]

_MAX_READER_STREAMS = 256    # past this many distinct reader streams, a writer waits for the whole device


class ParameterGuard:
    """Many readers or one writer of a model's parameters (see the module docstring).

    Re-entrant per thread: a reader may read again, and a writer may read or write again,
    without waiting for itself. A thread that reads may not start writing (it would wait
    for its own read): that is refused with a RuntimeError.
    """

    def __init__(self, backend):
        self._backend = backend
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0              # reads in progress (outermost ones)
        self._writer = None            # the thread updating the parameters, if any
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()   # .reads: this thread's read depth
        self._writer_stream = None     # the stream of the last update (None: none, or no streams)
        self._reader_streams = set()   # streams that read since the last update; None: too many to list

    def __getstate__(self):
        raise TypeError("a ParameterGuard belongs to one live model and is not copied")

    @contextlib.contextmanager
    def reading(self):
        """Read the parameters (queue work that reads them) inside the block."""
        me = threading.get_ident()
        depth = getattr(self._local, "reads", 0)
        if depth or self._writer == me:
            self._local.reads = depth + 1
            try:
                yield
            finally:
                self._local.reads = depth
            return
        backend = self._backend
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
            writer_stream = self._writer_stream
            stream = backend.current_stream()
            if stream is not None and self._reader_streams is not None:
                self._reader_streams.add(stream)
                if len(self._reader_streams) > _MAX_READER_STREAMS:
                    self._reader_streams = None
        self._local.reads = 1
        try:
            backend.wait_for_stream(writer_stream)   # the last update's device work comes first
            yield
        finally:
            self._local.reads = 0
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self):
        """Change the parameters (queue work that writes them) inside the block."""
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            try:
                yield
            finally:
                self._writer_depth -= 1
            return
        if getattr(self._local, "reads", 0):
            raise RuntimeError("cannot update a model's parameters while this thread is reading them")
        backend = self._backend
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._writer_depth = 1
            readers, self._reader_streams = self._reader_streams, set()
        try:
            # the device work of earlier readers on other streams comes before the update
            if readers is None:
                backend.synchronize_device()
            else:
                for stream in readers:
                    backend.wait_for_stream(stream)
            yield
        finally:
            with self._cond:
                self._writer_stream = backend.current_stream()
                self._writer = None
                self._writer_depth = 0
                self._cond.notify_all()


class ExclusiveClaim:
    """A claim that one caller holds at a time; a second claim fails at once with RuntimeError
    (``what`` names the activity in the message)."""

    def __init__(self, what: str):
        self._what = what
        self._lock = threading.Lock()
        self._holder = None

    @property
    def held_by_other_thread(self) -> bool:
        holder = self._holder
        return holder is not None and holder != threading.get_ident()

    @property
    def held(self) -> bool:
        return self._holder is not None

    @contextlib.contextmanager
    def claim(self):
        if not self._lock.acquire(blocking=False):
            where = "another thread" if self.held_by_other_thread else "this thread"
            raise RuntimeError(f"{self._what} is already running in {where}; "
                               "a model trains in one fit() at a time")
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()
