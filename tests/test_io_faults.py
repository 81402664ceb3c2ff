"""Fault injection on model files: whatever the bytes, ``MLP.load`` either returns a model that
predicts or raises a ValueError naming the problem; never another exception (a
NotImplementedError from zipfile, an AttributeError from a member that is not an array), never
the last of two members with one name.

Every single-bit flip of a small model file, 3000 seeded random corruptions, and crafted
archives (not .npy data, duplicate members, absurd headers, compression methods no model file
uses, encryption, zip bombs)."""
from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import gpunet as gn

NOT_A_MODEL = "is not a readable gpunet model file"
X = np.random.default_rng(3).normal(size=(5, 3))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small model's file (about 2 kB: 18,000 bits to flip) and its predictions."""
    net = gn.MLP([3, 4, 2], seed=0)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    net.save(path)
    return path.read_bytes(), net.predict(X)


class Outcomes:
    """Loads corrupted bytes and sorts what happened: refused (ValueError), loaded (and
    predicting: whether as the original model did), or anything else, a failure."""

    def __init__(self, path, expected_predictions):
        self.path, self.expected = path, expected_predictions
        self.refused = self.same = self.different = 0
        self.failures = []
        path.touch()

    def load(self, data: bytes, what):
        # rewritten in place: opening with truncation costs more than the load on some file systems
        with open(self.path, "r+b") as fh:
            fh.write(data)
            fh.truncate()
        try:
            predictions = gn.MLP.load(self.path).predict(X)
        except ValueError as exc:
            if NOT_A_MODEL not in str(exc):
                self.failures.append((what, f"ValueError without the file named: {exc}"))
            self.refused += 1
            return
        except Exception as exc:        # noqa: BLE001 -- the point: anything else is a failure
            self.failures.append((what, f"{type(exc).__name__}: {exc}"))
            return
        if np.array_equal(predictions, self.expected):
            self.same += 1
        else:
            self.different += 1

    def report(self):
        return f"{len(self.failures)} failures, e.g. " + "; ".join(f"{w}: {m}" for w, m in self.failures[:5])


def test_every_single_bit_flip_loads_the_same_model_or_is_refused(tmp_path, model_file):
    data, expected = model_file
    outcomes = Outcomes(tmp_path / "flipped.npz", expected)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        outcomes.load(bytes(flipped), f"bit {bit}")
    assert not outcomes.failures, outcomes.report()
    # every member is CRC-checked, so a flip that loads is in bytes that do not change the model
    # (a timestamp, the zip's version-made-by): it gives exactly the original predictions
    assert outcomes.different == 0
    assert outcomes.refused > 0.8 * len(data) * 8


def _corruptions(data: bytes, n: int, seed: int):
    """``n`` seeded corruptions of ``data``: (description, bytes)."""
    rng = np.random.default_rng(seed)
    size = len(data)
    for i in range(n):
        kind = ("truncate", "overwrite", "zero_span", "insert", "delete_span")[i % 5]
        buffer = bytearray(data)
        if kind == "truncate":
            cut = int(rng.integers(0, size))
            buffer = buffer[:cut]
            what = f"truncated to {cut}"
        elif kind == "overwrite":
            positions = rng.integers(0, size, size=int(rng.integers(1, 9)))
            for p in positions:
                buffer[p] = int(rng.integers(0, 256))
            what = f"overwrote {sorted(positions.tolist())}"
        elif kind == "zero_span":
            start, length = int(rng.integers(0, size)), int(rng.integers(1, 65))
            buffer[start:start + length] = bytes(len(buffer[start:start + length]))
            what = f"zeroed {length} at {start}"
        elif kind == "insert":
            at = int(rng.integers(0, size + 1))
            buffer[at:at] = rng.bytes(int(rng.integers(1, 17)))
            what = f"inserted at {at}"
        else:
            start, length = int(rng.integers(0, size)), int(rng.integers(1, 65))
            del buffer[start:start + length]
            what = f"deleted {length} at {start}"
        yield f"#{i} {what}", bytes(buffer)


def test_random_corruptions_load_a_working_model_or_are_refused(tmp_path, model_file):
    data, expected = model_file
    outcomes = Outcomes(tmp_path / "corrupt.npz", expected)
    for what, corrupted in _corruptions(data, 3000, seed=13):
        outcomes.load(corrupted, what)
    assert not outcomes.failures, outcomes.report()
    assert outcomes.refused + outcomes.same + outcomes.different == 3000
    assert outcomes.refused > 2500


# ---- crafted archives ---------------------------------------------------------------------------
def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _archive(path, members, compression=zipfile.ZIP_STORED):
    """A zip of ``members`` [(name, bytes)] at ``path``; repeated names are written as given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, payload in members:
                archive.writestr(name, payload)
    return path


def _npy_with_header(header: dict, payload: bytes = b"\0" * 16) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def _refused(path, match):
    with pytest.raises(ValueError, match=NOT_A_MODEL) as info:
        gn.MLP.load(path)
    assert info.match(match), str(info.value)
    return str(info.value)


def _replaced(model_file, name, payload):
    members = _members(model_file[0])
    members[name] = payload
    return list(members.items())


@pytest.mark.parametrize("payload", [b"hello, not an array", b"", b"\x93NUMP", b"PK\x03\x04" + bytes(40)],
                         ids=["text", "empty", "short_magic", "zip_inside"])
def test_a_member_that_is_not_npy_data_is_named(tmp_path, model_file, payload):
    path = _archive(tmp_path / "m.npz", _replaced(model_file, "format.npy", payload))
    _refused(path, "the format member is not .npy data")


def test_duplicate_members_are_refused_not_read_last_wins(tmp_path, model_file):
    members = _members(model_file[0])
    other = gn.MLP([3, 4, 2], seed=1)
    other.save(tmp_path / "other.npz")
    second_params = _members((tmp_path / "other.npz").read_bytes())["params.npy"]
    path = _archive(tmp_path / "m.npz", [*members.items(), ("params.npy", second_params)])
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist().count("params.npy") == 2      # what zipfile would silently resolve
    _refused(path, "more than one member named params.npy")


def test_a_duplicate_of_every_member_is_refused(tmp_path, model_file):
    for name, payload in _members(model_file[0]).items():
        path = _archive(tmp_path / "m.npz", [*_members(model_file[0]).items(), (name, payload)])
        _refused(path, f"more than one member named {name}")


@pytest.mark.parametrize("name, header, match", [
    ("params.npy", {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)}, r"declares \(1000000000000,\)"),
    ("params.npy", {"descr": "<f8", "fortran_order": False, "shape": (2 ** 62, 2 ** 62)}, "declares"),
    ("format.npy", {"descr": "<U10", "fortran_order": False, "shape": (10 ** 9, 10 ** 9)}, "declares"),
    ("config.npy", {"descr": "<f4", "fortran_order": False, "shape": (-1,)}, "impossible array"),
    ("version.npy", {"descr": "|V0", "fortran_order": False, "shape": (5,)}, "impossible array"),
], ids=["params_terabytes", "params_overflowing", "format_huge", "negative", "zero_itemsize"])
def test_an_absurd_shape_header_is_refused_before_allocating(tmp_path, model_file, name, header, match):
    path = _archive(tmp_path / "m.npz", _replaced(model_file, name, _npy_with_header(header)))
    tracemalloc.start()
    try:
        _refused(path, match)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("text, match", [
    # numpy's own reader falls back to a Python 2 header filter here and raises tokenize.TokenError
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"(" * 5000 + b"\n", "not a dict of descr"),
    (b"(" * 150 + b")" * 150, "not a dict of descr"),
    (b"{[1]: 2}", "not a dict of descr"),                  # literal_eval: TypeError, unhashable
    (b"-" * 9000 + b"1", "not a dict of descr"),
    (b"{'descr': 12, 'fortran_order': False, 'shape': ()}", "header is malformed"),
    (b"{'descr': '<f4', 'fortran_order': 0, 'shape': ()}", "header is malformed"),
    (b"{'descr': 'U99999999999999999999', 'fortran_order': False, 'shape': ()}", "dtype .* is not one numpy knows"),
    (b"{'descr': '<i8', 'fortran_order': False, 'shape': ()}" + b" " * 20000, "20053 bytes long"),
], ids=["nested_unclosed", "nested_closed", "unhashable_key", "deep_unary", "descr_number", "order_int",
        "dtype_overflow", "header_too_long"])
def test_an_unparsable_npy_header_is_named(tmp_path, model_file, text, match):
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) % (1 << 16)) + text
    path = _archive(tmp_path / "m.npz", _replaced(model_file, "version.npy", member))
    _refused(path, f"the version field's .*{match}")


@pytest.mark.parametrize("prefix, match", [(b"\x93NUMPY\x03\x00", "version 3.0, not 1.0 or 2.0"),
                                           (b"\x93NUMPY\x01\x00\x05", "header is truncated"),
                                           (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f", "bytes long")])
def test_an_npy_member_of_another_version_or_cut_short_is_named(tmp_path, model_file, prefix, match):
    _refused(_archive(tmp_path / "m.npz", _replaced(model_file, "format.npy", prefix)), match)


def _central_directory_entries(buffer):
    """Offsets of the central directory's file headers (a small test zip has no comment or
    payload that could spell their signature)."""
    offset = buffer.find(b"PK\x01\x02")
    while offset >= 0:
        yield offset
        offset = buffer.find(b"PK\x01\x02", offset + 4)


def _set_compression_method(data: bytes, method: int) -> bytes:
    """``data`` with every member's compression method field (local header and central
    directory) set to ``method``: the zip now claims a method it was not written with."""
    buffer = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            struct.pack_into("<H", buffer, info.header_offset + 8, method)
    for entry in _central_directory_entries(buffer):
        struct.pack_into("<H", buffer, entry + 10, method)
    return bytes(buffer)


@pytest.mark.parametrize("method", [99, 1, 6, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 93],
                         ids=["unknown_99", "shrunk", "imploded", "bzip2", "lzma", "zstandard"])
def test_a_compression_method_no_model_file_uses_is_named(tmp_path, model_file, method):
    path = tmp_path / "m.npz"
    path.write_bytes(_set_compression_method(model_file[0], method))
    _refused(path, f"compression method {method}; a model file's members are stored or deflated")


def test_an_encrypted_member_is_named(tmp_path, model_file):
    buffer = bytearray(model_file[0])
    entry = next(_central_directory_entries(buffer))
    struct.pack_into("<H", buffer, entry + 8, struct.unpack_from("<H", buffer, entry + 8)[0] | 0x1)
    path = tmp_path / "m.npz"
    path.write_bytes(bytes(buffer))
    _refused(path, "member is encrypted")


def _bomb_member(n_bytes: int) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros(n_bytes, np.uint8))
    return buffer.getvalue()


def test_a_zip_bomb_in_a_small_member_is_refused_unread(tmp_path, model_file):
    # 64 MB of zeros deflate to about 64 kB; its declared size gives it away
    path = _archive(tmp_path / "m.npz", _replaced(model_file, "config.npy", _bomb_member(64 << 20)),
                    compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        _refused(path, "the config field is implausibly large")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_zip_bomb_that_lies_about_its_size_is_refused_reading_no_more_than_it_declares(tmp_path, model_file):
    path = _archive(tmp_path / "m.npz", _replaced(model_file, "params.npy", _bomb_member(64 << 20)),
                    compression=zipfile.ZIP_DEFLATED)
    buffer = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("params.npy")
        honest = _members(model_file[0])["params.npy"]
    # claim the size of the honest params member, in the local header and the central directory
    struct.pack_into("<I", buffer, info.header_offset + 22, len(honest))
    for entry in _central_directory_entries(buffer):
        name_length = struct.unpack_from("<H", buffer, entry + 28)[0]
        if buffer[entry + 46:entry + 46 + name_length] == b"params.npy":
            struct.pack_into("<I", buffer, entry + 24, len(honest))
    path.write_bytes(bytes(buffer))
    tracemalloc.start()
    try:
        _refused(path, "declares|CRC|truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_members_other_than_the_four_are_refused(tmp_path, model_file):
    members = _members(model_file[0])
    extra = _archive(tmp_path / "extra.npz", [*members.items(), ("notes.txt", b"hi")])
    _refused(extra, r"expected the fields \['config', 'format', 'params', 'version'\].*notes.txt")
    renamed = dict(members)
    renamed["params"] = renamed.pop("params.npy")          # np.load would have accepted this name
    _refused(_archive(tmp_path / "renamed.npz", list(renamed.items())), "expected the fields")
    nested = {f"dir/{name}": payload for name, payload in members.items()}
    _refused(_archive(tmp_path / "nested.npz", list(nested.items())), "expected the fields")


def test_a_pristine_copy_still_loads(tmp_path, model_file):
    """Guards the crafted cases: rewriting the members with zipfile gives a loadable model."""
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = _archive(tmp_path / "copy.npz", list(_members(model_file[0]).items()), compression=compression)
        np.testing.assert_array_equal(gn.MLP.load(path).predict(X), model_file[1])
