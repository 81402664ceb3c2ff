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

import ast
import json
import os
import struct
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["save", "load", "save_archive", "load_archive", "FORMAT", "FORMAT_VERSION", "READ_ERRORS"]

FORMAT = "gpunet.MLP"
FORMAT_VERSION = 1
_KEYS = {"format", "version", "config", "params"}
# files written before labels, feature names and metadata were kept lack the optional keys
_REQUIRED_CONFIG = frozenset({"sizes", "activation", "output", "loss", "init", "weight_decay", "dtype", "seed"})
_OPTIONAL_CONFIG = frozenset({"classes", "feature_names", "metadata", "standardize", "input_scaling"})
_MAX_CONFIG_CHARS = 1 << 20
_MAX_SMALL_MEMBER_BYTES = 4 * _MAX_CONFIG_CHARS + 4096
_NPY_HEADER_SLACK = 4096
_MEMBERS = {f"{key}.npy": key for key in _KEYS}
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER_CHARS = 10_000      # numpy's own limit (max_header_size)
# what np.savez and np.savez_compressed write; other methods are refused by name
_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_ENCRYPTED_FLAG = 0x1
# What the zip and .npy readers raise, besides ValueError, on corrupt or unusual bytes: a broken
# archive, deflate stream or header field, zip features this zipfile lacks (NotImplementedError,
# RuntimeError for encryption), a header that nests or sizes absurdly. Only the reading of the
# file is guarded by these: building the model from what was read is not. Public, for code that
# sniffs an archive before handing it to ``load`` (``checkpoint.is_checkpoint``).
READ_ERRORS = (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError,
               RuntimeError, OverflowError, MemoryError)


def save(path, config: dict, params: np.ndarray):
    """Write a model's ``config`` (JSON-able) and flat ``params`` (a host array) to ``path``
    (exactly that name; no suffix is added)."""
    _write_atomically(os.fspath(path), {
        "format": np.array(FORMAT),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "config": np.array(json.dumps(config)),
        "params": np.asarray(params),
    })


def _write_atomically(path, arrays):
    """``np.savez`` into a temporary file beside ``path``, synced and renamed over it: a crash
    never leaves half a file behind."""
    directory = os.path.dirname(os.path.abspath(path))
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


def _checked_members(archive, bad, what):
    """The archive's member names, once each is known to appear once (zipfile would silently
    read the last of repeated names) and to be stored or deflated, not encrypted; ``bad(why)``
    makes the error, ``what`` names the kind of file."""
    names = archive.namelist()
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise bad(f"the archive holds more than one member named {', '.join(repeated)}")
    for info in archive.infolist():
        if info.compress_type not in _COMPRESSIONS:
            raise bad(f"the {info.filename} member uses zip compression method {info.compress_type}; "
                      f"{what}'s members are {' or '.join(_COMPRESSIONS.values())}")
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise bad(f"the {info.filename} member is encrypted")
    return names


def _read_fields(path):
    """The checked config and the params array of the archive at ``path``. Every member is
    looked at before it is read: exactly the four expected names, each once; stored or
    deflated, not encrypted; .npy data whose header declares exactly the bytes the member
    holds (so no header can make us allocate more than the file unpacks to); no Python
    objects. The small members are read first, so that the params member's unpacked size is
    bounded by the config before it is read (zip bombs)."""
    with open(path, "rb") as fh:
        if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            raise _bad(path, "it is a single array, not an .npz archive")
    with zipfile.ZipFile(path) as archive:
        names = _checked_members(archive, lambda why: _bad(path, why), "a model file")
        if set(names) != set(_MEMBERS):
            found = sorted(name.removesuffix(".npy") for name in names)
            raise _bad(path, f"expected the fields {sorted(_KEYS)} (as .npy members), found {found}")
        for key in ("format", "version", "config"):
            if archive.getinfo(f"{key}.npy").file_size > _MAX_SMALL_MEMBER_BYTES:
                raise _bad(path, f"the {key} field is implausibly large")
        header = {key: _read_member(path, archive, key) for key in ("format", "version", "config")}
        cfg = _check_header(path, header, archive.getinfo("params.npy").file_size)
        return cfg, _read_member(path, archive, "params")


def _npy_header(path, key, member):
    """(shape, fortran_order, dtype) from the .npy header (versions 1.0 and 2.0) that starts
    ``member``. Parsed here, not by numpy, whose fallback for Python 2 headers raises
    tokenize errors on a corrupt one: here every bad header is a ValueError naming the field."""
    prefix = member.read(len(_NPY_MAGIC) + 2)
    if len(prefix) < len(_NPY_MAGIC) + 2 or not prefix.startswith(_NPY_MAGIC):
        raise _bad(path, f"the {key} member is not .npy data")
    major, minor = prefix[-2], prefix[-1]
    if (major, minor) not in ((1, 0), (2, 0)):      # 3.0 only adds UTF-8 field names, which no model file has
        raise _bad(path, f"the {key} field is .npy version {major}.{minor}, not 1.0 or 2.0")
    length_format = "<H" if major == 1 else "<I"      # how long the header is: 2 bytes, or 4 in 2.0
    length_bytes = member.read(struct.calcsize(length_format))
    if len(length_bytes) != struct.calcsize(length_format):
        raise _bad(path, f"the {key} field's .npy header is truncated")
    length = struct.unpack(length_format, length_bytes)[0]
    if length > _MAX_NPY_HEADER_CHARS:
        raise _bad(path, f"the {key} field's .npy header is {length} bytes long, more than any model file's")
    text = member.read(length)
    try:
        header = ast.literal_eval(text.decode("latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        header = None
    if len(text) != length or not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _bad(path, f"the {key} field's .npy header is not a dict of descr, fortran_order and shape")
    shape, fortran_order, descr = header["shape"], header["fortran_order"], header["descr"]
    if not isinstance(shape, tuple) or not all(type(n) is int for n in shape) or type(fortran_order) is not bool \
            or not isinstance(descr, str):
        raise _bad(path, f"the {key} field's .npy header is malformed: {header!r:.200}")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, OverflowError):
        raise _bad(path, f"the {key} field's dtype {descr!r:.100} is not one numpy knows") from None
    return shape, fortran_order, dtype


def _read_member(path, archive, key):
    """The array in member ``key``.npy, read without pickle after its header is checked
    against the member's unpacked size."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        shape, fortran_order, dtype = _npy_header(path, key, member)
        if dtype.hasobject:
            raise _bad(path, f"the {key} field holds Python objects (pickled data), which no model file has")
        if any(n < 0 for n in shape) or dtype.itemsize == 0:
            raise _bad(path, f"the {key} field declares an impossible array: shape {shape} of {dtype}")
        declared = dtype.itemsize * int(np.prod(shape, dtype=object))   # Python ints: no overflow
        present = info.file_size - member.tell()
        if declared != present:
            raise _bad(path, f"the {key} field's header declares {shape} of {dtype} ({declared} bytes) "
                             f"but the member holds {present} bytes of data")
        data = member.read(declared)
        if len(data) != declared or member.read(1):   # reading to the end checks the CRC
            raise _bad(path, f"the {key} field's data is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


def load(path, build):
    """Read a model file written by ``save``: ``build(config)`` makes the model (it raises
    TypeError or ValueError for a config that describes none), whose ``n_params``, ``dtype``
    and ``set_flat_params`` then take the file's parameters. Returns the model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!s}")
    try:
        cfg, params = _read_fields(path)
    except ValueError as exc:
        if "not a readable gpunet model" in str(exc):
            raise
        raise _bad(path, str(exc)) from None
    except READ_ERRORS as exc:
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


# ---- other archives of the same kind (checkpoints) ----------------------------------------------
def save_archive(path, fmt: str, version: int, meta: dict, arrays: dict):
    """Write an archive like a model file: ``format`` and ``version``, each ``meta`` value as
    a JSON string member, and ``arrays`` (host arrays) as they are; atomically."""
    members = {"format": np.array(fmt), "version": np.array(version, dtype=np.int64)}
    for key, value in meta.items():
        members[key] = np.array(json.dumps(value, allow_nan=True))
    members.update({key: np.asarray(value) for key, value in arrays.items()})
    _write_atomically(os.fspath(path), members)


def load_archive(path, fmt: str, version: int, meta_keys, max_meta_chars: int, what: str):
    """(meta, arrays) of an archive written by ``save_archive``: the JSON members ``meta_keys``
    decoded, every other member an array; read without pickle, each member's header checked
    against its size, and anything unreadable a ValueError naming ``what`` the file is not."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} file at {path}")

    def bad(why):
        return ValueError(f"{path} is not a readable gpunet {what}: {why}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = _checked_members(archive, bad, f"a gpunet {what}")
            if not all(name.endswith(".npy") for name in names):
                raise bad("it holds members that are not .npy arrays")
            keys = [name[:-len(".npy")] for name in names]
            for key in ("format", "version", *meta_keys):
                if key not in keys:
                    raise bad(f"it lacks the {key} member")
            # copies: the arrays become an optimizer's or a model's own, written in place
            members = {key: _read_member(path, archive, key).copy() for key in keys}
    except ValueError as exc:
        if "readable gpunet" in str(exc):
            raise
        raise bad(str(exc)) from None
    except READ_ERRORS as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    fmt_found, version_found = members.pop("format"), members.pop("version")
    if fmt_found.shape != () or fmt_found.dtype.kind != "U" or str(fmt_found) != fmt:
        raise bad(f"its format is {fmt_found!r}, expected {fmt!r}")
    if version_found.shape != () or version_found.dtype.kind not in "iu" or int(version_found) != version:
        raise bad(f"its version is {version_found!r}; this gpunet reads {version}")
    meta = {}
    for key in meta_keys:
        text = members.pop(key)
        if text.shape != () or text.dtype.kind != "U" or len(str(text)) > max_meta_chars:
            raise bad(f"its {key} member is not a JSON string")
        try:
            meta[key] = json.loads(str(text))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise bad(f"its {key} member is not valid JSON ({exc})") from None
    return meta, members
