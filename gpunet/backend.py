"""Choosing the array backend: ``set_backend``, ``get_backend``, ``use_backend``, ``to_numpy``.

The backends themselves are ``NumpyBackend`` (``gpunet.numpy_backend``, the reference ops)
and ``CupyBackend`` (``gpunet.cupy_backend``, the same ops on the GPU with fused kernels),
imported only when a GPU is asked for, so ``import gpunet`` never imports CuPy.

``set_backend`` sets the process default, which every thread sees. ``use_backend`` selects a
backend for a block of code in its own thread or asyncio task only (a ``contextvars``
variable): other threads keep theirs, and blocks that enter and leave in any interleaving
across threads restore exactly what their own thread had. A model keeps the backend it was
built with, whatever is selected later.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Iterator

import numpy as np

from .numpy_backend import NumpyBackend

__all__ = ["NumpyBackend", "set_backend", "get_backend", "use_backend", "resolve_backend", "to_numpy",
           "BACKEND_NAMES", "gpu_status", "default_backend_chosen"]

log = logging.getLogger("gpunet")

BACKEND_NAMES = ("auto", "numpy", "cupy")

_default: NumpyBackend | None = None          # the process default (set_backend, GPUNET_BACKEND)
_default_lock = threading.Lock()              # first use from many threads picks it once
_scoped: contextvars.ContextVar = contextvars.ContextVar("gpunet_backend", default=None)


def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CuPy imports and a CUDA device runs a kernel."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return False, "CuPy found no CUDA device"
        (cupy.arange(3) + 1).sum().item()  # a real launch catches driver mismatches
    except Exception as exc:
        return False, f"CUDA is not usable ({type(exc).__name__}: {exc})"
    return True, f"{count} CUDA device(s)"


def _cupy_backend() -> NumpyBackend:
    from .cupy_backend import CupyBackend   # CuPy only when a GPU is asked for
    return CupyBackend()


def _make(name: str) -> NumpyBackend:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    if key == "numpy":
        return NumpyBackend()
    ok, why = gpu_status()
    if key == "cupy":
        if not ok:
            raise RuntimeError(f"backend 'cupy' was asked for but no GPU is usable: {why}")
        return _cupy_backend()
    if ok:
        return _cupy_backend()
    # auto: quietly fall back, with a log record rather than a warning
    log.info("gpunet: using the NumPy backend (%s)", why)
    return NumpyBackend()


def set_backend(name: str = "auto") -> NumpyBackend:
    """Select the process-wide default backend for models created and used from now on.

    Every thread sees it, outside ``use_backend`` blocks.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}, default "auto"
        ``"auto"``: CuPy when a GPU works, else NumPy (logged, not warned).

    Returns
    -------
    NumpyBackend
        The backend (a ``CupyBackend``, a subclass, on the GPU).

    Raises
    ------
    TypeError
        When ``name`` is not a string.
    ValueError
        For an unknown name.
    RuntimeError
        For ``"cupy"`` when no GPU is usable, with the reason.
    """
    global _default
    backend = _make(name)
    with _default_lock:
        _default = backend
    return backend


def default_backend_chosen() -> bool:
    """Whether the process default has been chosen yet (by ``set_backend`` or a first use)."""
    return _default is not None


def get_backend() -> NumpyBackend:
    """The backend of the innermost ``use_backend`` block of this thread or task, else the default.

    The process default is chosen on first use from ``GPUNET_BACKEND`` (default "auto"),
    unless ``set_backend`` chose it.

    Returns
    -------
    NumpyBackend
        The active backend.

    Raises
    ------
    ValueError, RuntimeError
        When ``GPUNET_BACKEND`` names an unknown backend, or "cupy" without a usable GPU.
    """
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                # an empty variable means unset; a bad one is reported under its own name, since
                # the call that trips over it may be far from where it was set
                name = os.environ.get("GPUNET_BACKEND", "").strip() or "auto"
                try:
                    _default = _make(name)
                except (ValueError, RuntimeError) as exc:
                    raise type(exc)(f"GPUNET_BACKEND={name!r}: {exc}") from None
    return _default


def resolve_backend(backend=None) -> NumpyBackend:
    """The backend ``backend`` names: None is the active one (``get_backend``), a backend
    object is itself, a name ("numpy", "cupy", "auto") makes one as ``set_backend`` would."""
    if backend is None:
        return get_backend()
    if isinstance(backend, NumpyBackend):
        return backend
    return _make(backend)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[NumpyBackend]:
    """``with use_backend("numpy"): ...`` selects a backend for the block, then restores the last.

    Only in this thread or asyncio task: other threads keep theirs.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}
        The backend, as for ``set_backend``.

    Yields
    ------
    NumpyBackend
        The backend selected.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As ``set_backend`` raises them.
    """
    backend = _make(name)
    token = _scoped.set(backend)
    try:
        yield backend
    finally:
        _scoped.reset(token)


def to_numpy(x: object) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array (or anything ``np.asarray`` takes).

    Parameters
    ----------
    x : array-like
        A NumPy or CuPy array, or anything ``np.asarray`` takes.

    Returns
    -------
    numpy.ndarray
        ``x`` itself for a NumPy array, else a host copy.
    """
    get = getattr(x, "get", None)
    if get is not None and type(x).__module__.startswith("cupy"):
        return get()
    return np.asarray(x)
