"""Persistence: save/load round trips, atomic writes, and files that must be refused
without ever being unpickled."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import gpunet as gn
from gpunet.io import FORMAT, FORMAT_VERSION

N_FEATURES = 6
NOT_A_MODEL = "not a readable gpunet model file"


def _data(n_outputs, regression):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, N_FEATURES))
    y = rng.normal(size=(40, n_outputs)) * 0.5 if regression else np.arange(40) % n_outputs
    return X, y


ARCHITECTURES = {
    "per_layer_activations": dict(sizes=[N_FEATURES, 8, 7, 3], activation=["sigmoid", "leaky_relu"]),
    "scaled_sigmoid": dict(sizes=[N_FEATURES, 5, 3], activation=gn.Sigmoid(c=1.7159, beta=0.6666),
                           init="glorot_normal"),
    "leaky_slope": dict(sizes=[N_FEATURES, 9, 9, 4], activation=gn.LeakyReLU(0.2), init="he_normal",
                        weight_decay=1e-3),
    "mixed_objects_and_names": dict(sizes=[N_FEATURES, 5, 5, 5, 2],
                                    activation=[gn.Sigmoid(2.0, 0.5), "tanh", gn.LeakyReLU(0.05)],
                                    output="sigmoid", loss="mse", init="he_uniform"),
    "mse_regressor_float64": dict(sizes=[N_FEATURES, 7, 2], activation="tanh", output="identity", loss="mse",
                                  dtype="float64"),
    "tanh_output_regressor": dict(sizes=[N_FEATURES, 4, 1], activation="relu", output="tanh", loss="mse"),
    "float64_no_hidden_layer": dict(sizes=[N_FEATURES, 3], dtype="float64", weight_decay=0.5),
    "no_seed": dict(sizes=[N_FEATURES, 3, 3], seed=None),
}


def trained(options):
    options = {"seed": 5, **options}
    net = gn.MLP(**options)
    regression = options.get("loss") == "mse"
    X, y = _data(options["sizes"][-1], regression)
    net.fit(X, y, epochs=2, batch_size=8, lr=0.05, momentum=0.5, progress=False)
    return net, X


@pytest.fixture
def saved_model(tmp_path):
    net, _ = trained(ARCHITECTURES["per_layer_activations"])
    path = tmp_path / "model.npz"
    net.save(path)
    return net, path


# ---- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_round_trip_gives_identical_model(backend, tmp_path, arch):
    net, X = trained(ARCHITECTURES[arch])
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = gn.MLP.load(path)
    assert loaded.config() == net.config()
    assert repr(loaded) == repr(net)
    assert loaded.dtype == net.dtype and loaded.backend.name == backend.name
    assert [a.config() for a in loaded.activations] == [a.config() for a in net.activations]
    np.testing.assert_array_equal(gn.to_numpy(loaded.flat_params), gn.to_numpy(net.flat_params))
    for p_loaded, p_net in zip(loaded.params, net.params):
        assert p_loaded.shape == p_net.shape
        np.testing.assert_array_equal(gn.to_numpy(p_loaded), gn.to_numpy(p_net))
    np.testing.assert_array_equal(gn.to_numpy(loaded.forward(X)), gn.to_numpy(net.forward(X)))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_round_trip_through_str_path_and_a_name_without_suffix(tmp_path):
    net, X = trained(ARCHITECTURES["leaky_slope"])
    path = str(tmp_path / "model.weights")   # saved under exactly this name
    net.save(path)
    assert os.listdir(tmp_path) == ["model.weights"]
    np.testing.assert_array_equal(gn.MLP.load(path).predict(X), net.predict(X))


def test_loaded_model_trains_on(tmp_path):
    net, X = trained(ARCHITECTURES["scaled_sigmoid"])
    net.save(tmp_path / "m.npz")
    loaded = gn.MLP.load(tmp_path / "m.npz")
    history = loaded.fit(X, np.arange(len(X)) % 3, epochs=2, batch_size=8, lr=0.05, progress=False)
    assert np.isfinite(history["loss"]).all()


def test_file_holds_exactly_the_documented_fields(saved_model):
    net, path = saved_model
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["config", "format", "params", "version"]
        assert str(data["format"]) == FORMAT
        assert int(data["version"]) == FORMAT_VERSION
        assert json.loads(str(data["config"])) == net.config()
        assert data["params"].dtype == net.dtype and data["params"].shape == (net.n_params,)


# ---- atomic writes ------------------------------------------------------------------------------
def test_save_leaves_no_temporary_file(tmp_path):
    net, _ = trained(ARCHITECTURES["per_layer_activations"])
    for _ in range(3):
        net.save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_replaces_an_existing_file_whole(tmp_path):
    net, X = trained(ARCHITECTURES["per_layer_activations"])
    reference = tmp_path / "reference.npz"
    net.save(reference)
    target = tmp_path / "model.npz"
    target.write_bytes(os.urandom(1 << 20))    # bigger than a model: no stale tail may survive
    net.save(target)
    assert target.stat().st_size == reference.stat().st_size
    np.testing.assert_array_equal(gn.MLP.load(target).predict(X), net.predict(X))


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, error):
    old_net, X = trained(ARCHITECTURES["per_layer_activations"])
    path = tmp_path / "model.npz"
    old_net.save(path)
    old_bytes = path.read_bytes()

    def savez_that_dies_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(np, "savez", savez_that_dies_halfway)
    new_net = gn.MLP([N_FEATURES, 8, 7, 3], activation=["sigmoid", "leaky_relu"], seed=99)
    with pytest.raises(type(error)):
        new_net.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]
    np.testing.assert_array_equal(gn.MLP.load(path).predict(X), old_net.predict(X))


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    net, _ = trained(ARCHITECTURES["per_layer_activations"])
    path = tmp_path / "model.npz"
    net.save(path)
    old_bytes = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        gn.MLP([N_FEATURES, 3], seed=1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_into_a_missing_directory_fails_cleanly(tmp_path):
    net = gn.MLP([N_FEATURES, 3], seed=1)
    with pytest.raises(FileNotFoundError):
        net.save(tmp_path / "no" / "such" / "model.npz")
    assert os.listdir(tmp_path) == []


# ---- refusing hostile and broken files ------------------------------------------------------------
class _TouchOnUnpickle:
    """Unpickling this creates ``path``: proof that code ran during a load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fields(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _write_npz(path, fields):
    np.savez(path, **fields)   # object arrays get pickled in, as an attacker's would
    return path


def _refused(path, match=NOT_A_MODEL):
    with pytest.raises(ValueError, match=match):
        gn.MLP.load(path)


def _hostile_object_array(marker):
    arr = np.empty(1, dtype=object)
    arr[0] = _TouchOnUnpickle(marker)
    return arr


def test_crafted_file_would_run_code_if_unpickled(tmp_path):
    """Guards the hostile-file tests below: the payload really fires under allow_pickle=True."""
    marker = tmp_path / "pwned"
    path = _write_npz(tmp_path / "evil.npz", {"params": _hostile_object_array(marker)})
    with np.load(path, allow_pickle=True) as data:
        data["params"]
    assert marker.exists()


@pytest.mark.parametrize("field", ["params", "config", "format", "version"])
def test_pickled_object_array_in_a_model_file_is_refused_unexecuted(tmp_path, saved_model, field):
    _, good = saved_model
    marker = tmp_path / "pwned"
    fields = _fields(good)
    fields[field] = _hostile_object_array(marker)
    _refused(_write_npz(tmp_path / "evil.npz", fields))
    assert not marker.exists(), "loading executed code from the file"


def test_pickled_npy_and_raw_pickle_are_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    npy = tmp_path / "evil.npy"
    np.save(npy, _hostile_object_array(marker), allow_pickle=True)
    _refused(npy)
    raw = tmp_path / "evil.npz"
    raw.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    _refused(raw)
    assert not marker.exists(), "loading executed code from the file"


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -30, -1], ids=lambda k: f"keep_{k}")
def test_truncated_file_is_refused(tmp_path, saved_model, keep):
    _, good = saved_model
    data = good.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep < 0 else keep
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[:cut])
    _refused(path)


def test_flipped_byte_in_the_parameters_is_refused(tmp_path, saved_model):
    _, good = saved_model
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("params.npy")
    data = bytearray(good.read_bytes())
    # the member's payload follows its 30-byte local header, name and extra field
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 5] ^= 0x10
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    _refused(path, match="CRC")


@pytest.mark.parametrize("prefix", [b"", b"PK\x03\x04", b"\x93NUMPY\x01\x00", b"\x80\x04"],
                         ids=["plain", "zip_magic", "npy_magic", "pickle_magic"])
def test_random_bytes_are_refused(tmp_path, prefix):
    path = tmp_path / "noise.npz"
    path.write_bytes(prefix + np.random.default_rng(len(prefix)).bytes(2000))
    _refused(path)


def test_foreign_files_are_refused(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(10.0))
    _refused(npy, match="single array, not an .npz")
    other_npz = _write_npz(tmp_path / "other.npz", {"weights": np.ones(3), "bias": np.zeros(3)})
    _refused(other_npz, match="expected the fields")
    text = tmp_path / "model.json"
    text.write_text(json.dumps({"sizes": [6, 3]}))
    _refused(text)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _refused(plain_zip, match="expected the fields")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _refused(empty)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        gn.MLP.load(tmp_path / "absent.npz")


def _config(good):
    return json.loads(str(_fields(good)["config"]))


def _edited(good, **changes):
    fields = _fields(good)
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return fields


def _with_config(good, **changes):
    cfg = _config(good)
    for key, value in changes.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    return {"config": np.array(json.dumps(cfg))}


FIELD_CASES = {
    "missing_params": (lambda g: _edited(g, params=None), "expected the fields"),
    "missing_config": (lambda g: _edited(g, config=None), "expected the fields"),
    "missing_format": (lambda g: _edited(g, format=None), "expected the fields"),
    "missing_version": (lambda g: _edited(g, version=None), "expected the fields"),
    "extra_field": (lambda g: _edited(g, optimizer_state=np.zeros(3)), "expected the fields"),
    "wrong_format": (lambda g: _edited(g, format=np.array("sklearn.MLPClassifier")), "format field"),
    "format_as_bytes": (lambda g: _edited(g, format=np.array(FORMAT.encode())), "format field"),
    "format_as_list": (lambda g: _edited(g, format=np.array([FORMAT, FORMAT])), "format field"),
    "future_version": (lambda g: _edited(g, version=np.array(FORMAT_VERSION + 1)), "version 2 is not supported"),
    "version_zero": (lambda g: _edited(g, version=np.array(0)), "version 0 is not supported"),
    "version_as_float": (lambda g: _edited(g, version=np.array(1.0)), "version field is not an integer"),
    "version_as_string": (lambda g: _edited(g, version=np.array("1")), "version field is not an integer"),
    "config_bad_json": (lambda g: _edited(g, config=np.array('{"sizes": [6, 3]')), "not valid JSON"),
    "config_deeply_nested": (lambda g: _edited(g, config=np.array("[" * 100_000 + "]" * 100_000)), "not valid JSON"),
    "config_json_list": (lambda g: _edited(g, config=np.array("[6, 3]")), "not a JSON object"),
    "config_as_bytes": (lambda g: _edited(g, config=np.array(b"{}")), "not a JSON string"),
    "config_missing_key": (lambda g: _edited(g, **_with_config(g, loss=None)), "config has keys"),
    "config_extra_key": (lambda g: _edited(g, **_with_config(g, __class__="os.system")), "config has keys"),
    "config_classes_wrong_length": (lambda g: _edited(g, **_with_config(g, classes=["a", "b"])),
                                    "no valid network .*classes must list the 3 label values"),
    "config_classes_repeated": (lambda g: _edited(g, **_with_config(g, classes=["a", "b", "a"])),
                                "no valid network .*classes must be distinct"),
    "config_classes_objects": (lambda g: _edited(g, **_with_config(g, classes=[{"a": 1}, [2], None])),
                               "no valid network .*classes must be numbers or strings"),
    "config_feature_names_numbers": (lambda g: _edited(g, **_with_config(g, feature_names=[1, 2, 3, 4, 5, 6])),
                                     "no valid network .*feature_names must be 6 strings"),
    "config_feature_names_string": (lambda g: _edited(g, **_with_config(g, feature_names="abcdef")),
                                    "no valid network .*feature_names must be a list"),
    "config_metadata_list": (lambda g: _edited(g, **_with_config(g, metadata=[1, 2])),
                             "no valid network .*metadata must be a dict"),
    "config_input_scaling_wrong_width": (lambda g: _edited(g, **_with_config(g, input_scaling={
        "mean": [0.0] * 5, "scale": [1.0] * 5})), "no valid network .*input_scaling is for 5 features"),
    "config_input_scaling_zero_scale": (lambda g: _edited(g, **_with_config(g, input_scaling={
        "mean": [0.0] * 6, "scale": [0.0] * 6})), "no valid network .*scale must be positive"),
    "config_standardize_string": (lambda g: _edited(g, **_with_config(g, standardize="yes")),
                                  "no valid network .*standardize"),
    "config_zero_width": (lambda g: _edited(g, **_with_config(g, sizes=[6, 0, 7, 3])), "no valid network .*layer widths must be positive"),
    "config_unknown_activation": (lambda g: _edited(g, **_with_config(g, activation=["gelu", "relu"])),
                                  "no valid network .*unknown hidden activation 'gelu'"),
    "config_bad_activation_params": (lambda g: _edited(g, **_with_config(g, activation=[{"name": "sigmoid", "c": -1},
                                                                                          "relu"])),
                                     "no valid network .*sigmoid c must be > 0"),
    "config_activation_kwargs_injection": (lambda g: _edited(g, **_with_config(g, activation=[
        {"name": "relu", "command": "rm -rf /"}, "relu"])), "no valid network"),
    "config_int_dtype": (lambda g: _edited(g, **_with_config(g, dtype="int32")), "no valid network .*dtype"),
    "config_cross_entropy_with_sigmoid": (lambda g: _edited(g, **_with_config(g, output={"name": "sigmoid"})),
                                          "no valid network .*needs output='softmax'"),
    # a few bytes describing a network of 2e10 parameters must not make us allocate it
    "config_huge_network": (lambda g: _edited(g, **_with_config(g, sizes=[100_000, 100_000, 100_000, 3])),
                            r"the network needs \(20000500003,\)"),
    "params_too_short": (lambda g: _edited(g, params=_fields(g)["params"][:-1]), "params has shape"),
    "params_too_long": (lambda g: _edited(g, params=np.concatenate([_fields(g)["params"]] * 2)), "params has shape"),
    "params_2d": (lambda g: _edited(g, params=_fields(g)["params"][None]), "params has shape"),
    "params_float64_for_float32": (lambda g: _edited(g, params=_fields(g)["params"].astype(np.float64)),
                                   "params dtype float64 does not match config dtype float32"),
    "params_int": (lambda g: _edited(g, params=_fields(g)["params"].astype(np.int32)), "params dtype int32"),
    "params_strings": (lambda g: _edited(g, params=_fields(g)["params"].astype(str)), "params dtype|unpacks to"),
    "params_nan": (lambda g: _edited(g, params=np.where(np.arange(len(_fields(g)["params"])) == 3, np.nan,
                                                       _fields(g)["params"]).astype(np.float32)), "NaN or infinite"),
    "params_inf": (lambda g: _edited(g, params=np.full_like(_fields(g)["params"], np.inf)), "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_malformed_model_fields_are_refused(tmp_path, saved_model, case):
    _, good = saved_model
    make_fields, match = FIELD_CASES[case]
    path = _write_npz(tmp_path / f"{case}.npz", make_fields(good))
    with pytest.raises(ValueError, match=NOT_A_MODEL) as info:
        gn.MLP.load(path)
    assert info.match(match)


def test_refused_load_names_the_file(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="garbage.npz"):
        gn.MLP.load(path)


def test_compressed_params_bomb_is_refused_before_unpacking(tmp_path):
    # a few hundred kB that would unpack to 200 MB of params for an 8-parameter network
    net = gn.MLP([3, 2], seed=0)
    good = tmp_path / "good.npz"
    net.save(good)
    fields = dict(np.load(good))
    fields["params"] = np.zeros(50_000_000, np.float32)
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **fields)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="unpacks to 200000128 bytes"):
        gn.MLP.load(bomb)


def test_saved_file_has_umask_permissions(tmp_path):
    import os
    net = gn.MLP([3, 2], seed=0)
    old = os.umask(0o022)
    try:
        net.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644
