"""Sharing one model between threads: readers of its parameters, their writer, and fit's claim.

``ParameterGuard`` lets any number of readers (inference, ``loss_and_grad``) work at once,
each with its own buffers, and lets one writer (an optimizer update in ``fit``,
``set_flat_params``, restoring the best epoch) change the parameters while no reader is
inside: a reader sees the parameters between two updates, never part of one. Writers are
preferred, so a stream of predictions cannot stall training indefinitely. Readers hold no
lock while they compute, so their BLAS or GPU work runs side by side; a writer holds the
guard's lock for its (short) update.

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

    ``with guard.reading():`` / ``with guard.writing():`` (or the primitives they wrap:
    ``outermost = guard.enter_read()`` ... ``guard.exit_read(outermost)``, ``enter_write``,
    ``exit_write``). Re-entrant per thread: a reader may read again, and a writer may read or
    write again, without waiting for itself. A thread that reads may not start writing (it
    would wait for its own read): that is refused with a RuntimeError. Each entry costs a
    lock round trip, about a microsecond (``fit`` takes the write side once per step).
    """

    def __init__(self, backend):
        self._backend = backend
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)   # a reader or writer left
        self._waiting = 0              # threads blocked on _changed
        self._readers = 0              # reads in progress (outermost ones)
        self._writer = None            # the thread updating the parameters, if any
        self._writers_waiting = 0
        self._local = threading.local()   # .reads: this thread's read depth
        self._writer_stream = None     # the stream of the last update (None: none, or no streams)
        self._reader_streams = set()   # streams that read since the last update; None: too many to list
        self._writing = _Writing(self)

    def __getstate__(self):
        raise TypeError("a ParameterGuard belongs to one live model and is not copied")

    def reading(self):
        """Read the parameters (queue work that reads them) inside the ``with`` block."""
        return _Reading(self)

    def writing(self):
        """Change the parameters (queue work that writes them) inside the ``with`` block."""
        return self._writing

    def _wait(self):
        self._waiting += 1
        try:
            self._changed.wait()
        finally:
            self._waiting -= 1

    def _wake(self):
        if self._waiting:
            self._changed.notify_all()

    def enter_read(self) -> bool:
        """Enter a read; False when it is nested in this thread's own read or write."""
        local = self._local
        depth = getattr(local, "reads", 0)
        if depth or self._writer == threading.get_ident():
            local.reads = depth + 1
            return False
        backend = self._backend
        stream = backend.current_stream()
        with self._lock:              # held by a writer for the whole of its update
            while self._writers_waiting:
                self._wait()
            self._readers += 1
            writer_stream = self._writer_stream
            if stream is not None and self._reader_streams is not None:
                self._reader_streams.add(stream)
                if len(self._reader_streams) > _MAX_READER_STREAMS:
                    self._reader_streams = None
        local.reads = 1
        backend.wait_for_stream(writer_stream)   # the last update's device work comes first
        return True

    def exit_read(self, outermost: bool):
        local = self._local
        local.reads -= 1
        if outermost:
            with self._lock:
                self._readers -= 1
                if self._readers == 0:
                    self._wake()

    def enter_write(self) -> bool:
        """Enter a write; False when it is nested in this thread's own write. The outermost
        write holds the guard's lock until ``exit_write``: readers wait at its door, and an
        optimizer step costs one lock round trip."""
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            return False
        self._lock.acquire()
        try:
            if self._readers:
                if getattr(self._local, "reads", 0):
                    raise RuntimeError("cannot update a model's parameters while this thread is reading them")
                self._writers_waiting += 1      # new readers wait too: writers go first
                try:
                    while self._readers:
                        self._wait()
                finally:
                    self._writers_waiting -= 1
            self._writer, self._writer_depth = me, 1
            readers = self._reader_streams
            if readers:
                self._reader_streams = set()
            # the device work of earlier readers on other streams comes before the update
            if readers is None:
                self._backend.synchronize_device()
            elif readers:
                for stream in readers:
                    self._backend.wait_for_stream(stream)
        except BaseException:
            self._writer = None
            self._lock.release()
            raise
        return True

    def exit_write(self):
        self._writer_depth -= 1
        if self._writer_depth:
            return
        self._writer_stream = self._backend.current_stream()
        self._writer = None
        self._wake()
        self._lock.release()


class _Reading:
    __slots__ = ("_guard", "_outermost")

    def __init__(self, guard):
        self._guard = guard

    def __enter__(self):
        self._outermost = self._guard.enter_read()

    def __exit__(self, *exc):
        self._guard.exit_read(self._outermost)


class _Writing:
    """The guard's write side as a reusable context manager (the depth lives in the guard:
    there is one writer at a time), so an optimizer step allocates nothing for it."""

    __slots__ = ("_guard",)

    def __init__(self, guard):
        self._guard = guard

    def __enter__(self):
        self._guard.enter_write()

    def __exit__(self, *exc):
        self._guard.exit_write()


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
