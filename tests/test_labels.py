"""Label values, feature names and metadata: a classifier trained on strings predicts strings,
a model trained on a DataFrame takes its columns by name, and both survive save/load, pickling
and copies. Refusals name the label or column and leave the model as it was."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import gpunet as gn

N = 240
NAMES = ["age", "height", "weight", "income"]
ANIMALS = np.array(["cat", "dog", "emu"])


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, len(NAMES)))
    index = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.4).astype(int)
    return X, index


def _frame(X):
    pd = pytest.importorskip("pandas", reason="pandas is needed for DataFrame inputs")
    return pd.DataFrame(X, columns=NAMES)


def _fitted(labels, X, **options):
    net = gn.MLP([X.shape[1], 16, 3], seed=3, **options)
    net.fit(X, labels, epochs=30, batch_size=16, lr=0.1, progress=False)
    return net


def _state(net):
    return (net.flat_params.copy() if isinstance(net.flat_params, np.ndarray) else gn.to_numpy(net.flat_params),
            None if net.classes is None else net.classes.copy(), net.feature_names, dict(net.metadata))


def _unchanged(before, net):
    after = _state(net)
    np.testing.assert_array_equal(before[0], after[0])
    assert (before[1] is None) == (after[1] is None)
    if before[1] is not None:
        np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


# ---- label values ---------------------------------------------------------------------------
def test_string_labels_train_like_their_indices_and_predict_strings():
    X, index = _data()
    by_name = _fitted(ANIMALS[index], X)
    by_index = _fitted(index, X)
    np.testing.assert_array_equal(by_name.classes, ANIMALS)
    assert by_index.classes is None
    # sorted distinct values are outputs 0..2: the same training, bit for bit
    np.testing.assert_array_equal(gn.to_numpy(by_name.flat_params), gn.to_numpy(by_index.flat_params))
    pred = by_name.predict(X)
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, ANIMALS[by_index.predict(X)])
    assert by_name.score(X, ANIMALS[index]) == by_index.score(X, index) > 0.8
    # predict_proba's columns are in the order of classes
    np.testing.assert_array_equal(by_name.classes[by_name.predict_proba(X).argmax(axis=1)], pred)


def test_explicit_classes_name_the_outputs_in_their_order():
    X, index = _data()
    classes = [30, 10, 20]     # output 0 means 30: not sorted on purpose
    labels = np.array(classes)[index]
    net = _fitted(labels, X, classes=classes)
    reference = _fitted(index, X)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(reference.flat_params))
    np.testing.assert_array_equal(net.predict(X), np.array(classes)[reference.predict(X)])
    assert net.score(X, labels) == reference.score(X, index)


@pytest.mark.parametrize("kind", ["list", "object_array", "series", "categorical"])
def test_label_containers(kind):
    X, index = _data()
    labels = ANIMALS[index]
    if kind == "list":
        y = labels.tolist()
    elif kind == "object_array":
        y = labels.astype(object)
    else:
        pd = pytest.importorskip("pandas", reason="pandas is needed for Series labels")
        y = pd.Series(labels, dtype="category" if kind == "categorical" else object)
    net = _fitted(y, X)
    np.testing.assert_array_equal(net.classes, ANIMALS)
    np.testing.assert_array_equal(net.predict(X), _fitted(labels, X).predict(X))


def test_categorical_of_numbers_and_booleans():
    pd = pytest.importorskip("pandas", reason="pandas is needed for Series labels")
    X, index = _data()
    numbers = _fitted(pd.Series(index, dtype="category"), X)
    assert numbers.classes is None     # already output indices
    net = gn.MLP([4, 8, 2], seed=1)
    net.fit(X, X[:, 0] > 0, epochs=5, batch_size=16, lr=0.1, progress=False)
    np.testing.assert_array_equal(net.classes, [False, True])
    assert net.predict(X).dtype == bool
    assert net.score(X, X[:, 0] > 0) > 0.8


def test_labels_survive_save_load_pickle_and_copy(tmp_path):
    X, index = _data()
    net = _fitted(ANIMALS[index], X)
    path = tmp_path / "animals.npz"
    net.save(path)
    for other in (gn.MLP.load(path), pickle.loads(pickle.dumps(net)), net.copy(), net.copy(dtype="float64")):
        np.testing.assert_array_equal(other.classes, ANIMALS)
        np.testing.assert_array_equal(other.predict(X), net.predict(X))
    ints = _fitted(np.array([7, 3, 5])[index], X, classes=[7, 3, 5])
    ints.save(path)
    loaded = gn.MLP.load(path)
    assert loaded.classes.dtype.kind == "i"
    np.testing.assert_array_equal(loaded.predict(X), ints.predict(X))


def test_unknown_label_is_named_and_changes_nothing():
    X, index = _data()
    net = _fitted(ANIMALS[index], X)
    before = _state(net)
    bad = ANIMALS[index].copy()
    bad[5] = "cow"
    for call in (lambda: net.fit(X, bad, epochs=1, progress=False), lambda: net.score(X, bad),
                 lambda: net.fit(X, ANIMALS[index], epochs=1, progress=False, validation_data=(X, bad))):
        with pytest.raises(ValueError, match=r"y(_val)? has label\(s\) the model does not know: 'cow'"):
            call()
    with pytest.raises(ValueError, match="does not know: 0, 1, 2"):
        net.fit(X, index, epochs=1, progress=False)     # indices are not this model's labels
    _unchanged(before, net)


def test_too_many_or_too_few_labels_hint_at_classes():
    X, index = _data()
    net = gn.MLP([4, 8, 2], seed=0)
    before = _state(net)
    with pytest.raises(ValueError, match=r"3 distinct labels \(cat, dog, emu\) but the network has 2 outputs; "
                                         r"pass classes="):
        net.fit(X, ANIMALS[index], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"labels in \[1, 3\] but must lie in 0\.\.1 .*classes="):
        net.fit(X, index + 1, epochs=1, progress=False)
    _unchanged(before, net)
    # too few distinct strings: which output would the missing one be? refused, classes= fixes it
    wide = gn.MLP([4, 8, 4], seed=0)
    with pytest.raises(ValueError, match="3 distinct labels .* 4 outputs"):
        wide.fit(X, ANIMALS[index], epochs=1, progress=False)
    wide = gn.MLP([4, 8, 4], seed=0, classes=["ant", "cat", "dog", "emu"])
    wide.fit(X, ANIMALS[index], epochs=2, progress=False)
    assert set(wide.predict(X)) <= {"ant", "cat", "dog", "emu"}


@pytest.mark.parametrize("classes, error, match", [
    (["a", "b"], ValueError, "classes must list the 3 label values"),
    (["a", "b", "a"], ValueError, "classes must be distinct"),
    ([[1], [2], [3]], TypeError, "classes must be numbers or strings"),
    ([1.0, np.nan, 2.0], ValueError, "classes must be finite"),
    ([None, 1, 2], TypeError, "classes must be numbers or strings"),
], ids=["short", "repeated", "nested", "nan", "none"])
def test_bad_classes_are_refused(classes, error, match):
    with pytest.raises(error, match=match):
        gn.MLP([4, 8, 3], classes=classes)


def test_classes_need_a_classifier():
    with pytest.raises(TypeError, match="classes names the outputs of a cross_entropy classifier"):
        gn.MLP([4, 8, 3], output="identity", loss="mse", classes=[0, 1, 2])


def test_regressors_keep_numeric_targets():
    X, _ = _data()
    net = gn.MLP([4, 8, 1], output="identity", loss="mse", seed=0)
    net.fit(X, X[:, 0], epochs=2, progress=False)
    assert net.classes is None and net.predict(X).dtype.kind == "f"


# ---- feature names -----------------------------------------------------------------------------
def test_dataframe_columns_are_learned_and_taken_by_name():
    X, index = _data()
    frame = _frame(X)
    net = _fitted(index, frame)
    assert net.feature_names == NAMES
    expected = net.predict(X)
    shuffled = frame[["income", "age", "weight", "height"]]
    np.testing.assert_array_equal(net.predict(shuffled), expected)
    np.testing.assert_allclose(net.predict_proba(shuffled), net.predict_proba(X))
    assert net.score(shuffled, index) == net.score(X, index)
    # a plain array is taken as it is: position means feature
    np.testing.assert_array_equal(net.predict(np.ascontiguousarray(X)), expected)
    # validation data in another column order is taken by name too
    twin = _fitted(index, frame)
    twin.fit(frame, index, epochs=1, progress=False, validation_data=(shuffled, index))
    net.fit(frame, index, epochs=1, progress=False, validation_data=(frame, index))
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


def test_missing_and_extra_columns_are_named_and_change_nothing():
    X, index = _data()
    frame = _frame(X)
    net = _fitted(index, frame)
    before = _state(net)
    with pytest.raises(ValueError, match=r"X lacks the model's feature\(s\) \['height'\]"):
        net.predict(frame.drop(columns="height"))
    renamed = frame.rename(columns={"income": "salary"})
    with pytest.raises(ValueError, match=r"lacks .*\['income'\] and has column\(s\) the model was not trained on "
                                         r"\['salary'\]"):
        net.fit(renamed, index, epochs=1, progress=False)
    extra = frame.assign(shoe_size=1.0)
    with pytest.raises(ValueError, match=r"X_val has column\(s\) the model was not trained on \['shoe_size'\]"):
        net.fit(frame, index, epochs=1, progress=False, validation_data=(extra, index))
    _unchanged(before, net)


def test_unnamed_or_numbered_columns_learn_no_names():
    pd = pytest.importorskip("pandas", reason="pandas is needed for DataFrame inputs")
    X, index = _data()
    net = _fitted(index, pd.DataFrame(X))          # RangeIndex columns: no names
    assert net.feature_names is None
    mixed = pd.DataFrame(X, columns=["a", "b", 2, "d"])
    assert _fitted(index, mixed).feature_names is None


def test_duplicate_column_names_are_refused():
    pd = pytest.importorskip("pandas", reason="pandas is needed for DataFrame inputs")
    X, index = _data()
    net = gn.MLP([4, 8, 3], seed=0)
    with pytest.raises(ValueError, match="X's column names must be distinct"):
        net.fit(pd.DataFrame(X, columns=["a", "b", "a", "c"]), index, epochs=1, progress=False)
    assert net.feature_names is None


def test_names_given_up_front_and_saved(tmp_path):
    X, index = _data()
    net = gn.MLP([4, 8, 3], seed=0, feature_names=NAMES, metadata={"source": "survey", "scale": [1.5, 2.0]})
    frame = _frame(X)
    net.fit(frame[NAMES[::-1]], index, epochs=3, progress=False)
    path = tmp_path / "named.npz"
    net.save(path)
    loaded = gn.MLP.load(path)
    assert loaded.feature_names == NAMES
    assert loaded.metadata == {"source": "survey", "scale": [1.5, 2.0]}
    np.testing.assert_array_equal(loaded.predict(frame[NAMES[1:] + NAMES[:1]]), net.predict(X))
    with pytest.raises(ValueError, match="feature_names must be 4 strings"):
        gn.MLP([4, 8, 3], feature_names=NAMES[:3])


# ---- metadata and old files ---------------------------------------------------------------------
@pytest.mark.parametrize("metadata, match", [
    ([1, 2], "metadata must be a dict"),
    ({"x": object()}, "metadata must be JSON-able"),
    ({"x": float("nan")}, "metadata must be JSON-able"),
])
def test_bad_metadata_is_refused(metadata, match):
    with pytest.raises(TypeError, match=match):
        gn.MLP([4, 3], metadata=metadata)


def test_metadata_is_a_copy():
    meta = {"scale": [1.0, 2.0]}
    net = gn.MLP([4, 3], metadata=meta)
    meta["scale"].append(3.0)
    assert net.metadata == {"scale": [1.0, 2.0]}


def test_files_without_the_new_keys_still_load(tmp_path):
    X, index = _data()
    net = _fitted(index, X)
    path = tmp_path / "old.npz"
    net.save(path)
    with np.load(path, allow_pickle=False) as data:
        fields = {k: data[k] for k in data.files}
    config = json.loads(str(fields["config"]))
    for key in ("classes", "feature_names", "metadata"):
        del config[key]
    fields["config"] = np.array(json.dumps(config))
    np.savez(path, **fields)
    loaded = gn.MLP.load(path)
    assert loaded.classes is None and loaded.feature_names is None and loaded.metadata == {}
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
