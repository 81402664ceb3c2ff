"""The model file format: ``.npz`` files, never pickle.

This module knows the format, not the model: ``save`` writes a config and a flat parameter
array, ``load`` reads them back and hands the config to a ``build`` function (``MLP.load``
passes ``MLP(**config)``) before filling the parameters it built. The file holds four arrays: ``format`` (the string "gpunet.MLP"), ``version`` (int),
``config`` (the architecture, and the label values, feature names, input scaling
and metadata where the model has them, as a JSON string) and ``params`` (the flat parameter buffer,
layout ``[W_1 .. W_L, b_1 .. b_L]``). It is written to a temporary file beside the target
and renamed over it, so a crash never leaves half a model behind. Loading reads with
``allow_pickle=False`` and checks every field, so a corrupt, truncated or foreign file (or
one crafted to run code) gives a ValueError instead.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gpunet.MLP"
FORMAT_VERSION = 1
_KEYS = {"format", "version", "config", "params"}
# files written before labels, feature names and metadata were kept lack the optional keys
_REQUIRED_CONFIG = frozenset({"sizes", "activation", "output", "loss", "init", "weight_decay", "dtype", "seed"})
_OPTIONAL_CONFIG = frozenset({"classes", "feature_names", "metadata", "standardize", "input_scaling"})
_MAX_CONFIG_CHARS = 1 << 20
_MAX_SMALL_MEMBER_BYTES = 4 * _MAX_CONFIG_CHARS + 4096
_NPY_HEADER_SLACK = 4096


def save(path, config: dict, params: np.ndarray):
    """Write a model's ``config`` (JSON-able) and flat ``params`` (a host array) to ``path``
    (exactly that name; no suffix is added)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "config": np.array(json.dumps(config)),
        "params": np.asarray(params),
    }
    fd, tmp = tempfile.mkstemp(prefix=".gpunet-", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())   # mkstemp makes 0600; saved models are ordinary files
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _bad(path, why):
    return ValueError(f"{path!s} is not a readable gpunet model file: {why}")


def _check_header(path, fields, params_bytes):
    """Check format, version and config; returns the config dict. Refuses a params member
    larger than the config's network needs before it is read."""
    fmt, version, config = (fields[k] for k in ("format", "version", "config"))
    if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        raise _bad(path, f"format field is {fmt!r}, expected {FORMAT!r}")
    if version.shape != () or version.dtype.kind not in "iu":
        raise _bad(path, "version field is not an integer")
    if int(version) != FORMAT_VERSION:
        raise _bad(path, f"format version {int(version)} is not supported (this gpunet reads {FORMAT_VERSION})")
    if config.shape != () or config.dtype.kind != "U" or len(str(config)) > _MAX_CONFIG_CHARS:
        raise _bad(path, "config field is not a JSON string")
    try:
        cfg = json.loads(str(config))
    except (json.JSONDecodeError, RecursionError) as exc:   # deep nesting overflows the parser
        raise _bad(path, f"config is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise _bad(path, "config is not a JSON object")
    missing, unknown = _REQUIRED_CONFIG - set(cfg), set(cfg) - _REQUIRED_CONFIG - _OPTIONAL_CONFIG
    if missing or unknown:
        raise _bad(path, f"config has keys {sorted(cfg)}, expected {sorted(_REQUIRED_CONFIG)}"
                         f" and optionally {sorted(_OPTIONAL_CONFIG)}")
    sizes = cfg.get("sizes")
    if isinstance(sizes, list) and all(type(s) is int and s > 0 for s in sizes):
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        if params_bytes > n_params * 8 + _NPY_HEADER_SLACK:
            raise _bad(path, f"params field unpacks to {params_bytes} bytes, more than "
                             f"the {n_params} parameters the config describes")
    return cfg


def load(path, build):
    """Read a model file written by ``save``: ``build(config)`` makes the model (it raises
    TypeError or ValueError for a config that describes none), whose ``n_params``, ``dtype``
    and ``set_flat_params`` then take the file's parameters. Returns the model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!s}")
    try:
        data = np.load(path, allow_pickle=False)
        # a plain .npy loads as an array, which is no context manager: refuse it first
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise _bad(path, "it is a single array, not an .npz archive")
        with data:
            keys = set(data.files)
            if keys != _KEYS:
                raise _bad(path, f"expected the fields {sorted(_KEYS)}, found {sorted(keys)}")
            # members are read lazily: the small ones first, so that the params member's
            # unpacked size can be bounded by the config before it is read (zip bombs)
            for key in ("format", "version", "config"):
                if data.zip.getinfo(f"{key}.npy").file_size > _MAX_SMALL_MEMBER_BYTES:
                    raise _bad(path, f"the {key} field is implausibly large")
            header = {k: data[k] for k in ("format", "version", "config")}
            cfg = _check_header(path, header, data.zip.getinfo("params.npy").file_size)
            params = data["params"]
    except ValueError as exc:
        if "not a readable gpunet model" in str(exc):
            raise
        # allow_pickle=False refuses object arrays with a ValueError
        raise _bad(path, str(exc)) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _bad(path, f"{type(exc).__name__}: {exc}") from None

    # match the parameter count before building, so a tiny file cannot make us allocate a huge network
    sizes = cfg["sizes"]
    if isinstance(sizes, list) and all(type(s) is int and s > 0 for s in sizes):
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        if params.ndim != 1 or params.shape[0] != n_params:
            raise _bad(path, f"params has shape {params.shape}, the network needs ({n_params},)")
    try:
        net = build(cfg)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"config describes no valid network ({exc})") from None
    if params.ndim != 1 or params.shape[0] != net.n_params:
        raise _bad(path, f"params has shape {params.shape}, the network needs ({net.n_params},)")
    if params.dtype != net.dtype:
        raise _bad(path, f"params dtype {params.dtype} does not match config dtype {net.dtype}")
    if not np.isfinite(params).all():
        raise _bad(path, "params contain NaN or infinite values")
    net.set_flat_params(params)
    return net
