"""``gpunet train --data``, ``gpunet predict`` and ``gpunet evaluate`` on data files (CSV with
and without a header, NPY, NPZ, Parquet), run in this process through ``gpunet.cli.main``;
and ``gpunet.tables``, the reader behind them, on both of its CSV paths (pandas and the
standard library's csv module)."""
from __future__ import annotations

import csv
import io
import re
import sys

import numpy as np
import pytest

import gpunet as gn
import gpunet.backend as backend_module
from gpunet.cli import main
from gpunet.tables import read_table

FAST = ["--no-progress", "--epochs", "15", "--hidden", "16", "--batch-size", "16"]
SPECIES = np.array(["setosa", "versicolor", "virginica"])
FEATURES = ["sepal", "petal", "width"]


@pytest.fixture(autouse=True)
def restore_active_backend(monkeypatch):
    monkeypatch.setattr(backend_module, "_default", backend_module._default)
    monkeypatch.delenv("GPUNET_BACKEND", raising=False)


def run_main(argv, capsys):
    """(exit code, stdout, stderr) of ``gpunet <argv>`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:    # argparse exits on bad options
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reported(out, what):
    match = re.search(rf"^{re.escape(what)}: ([-0-9.e]+)$", out, re.MULTILINE)
    assert match, f"no '{what}:' line in:\n{out}"
    return float(match.group(1))


def species_data(n=90, seed=0):
    """Three well separated classes; the third feature is on a scale of hundreds, which an
    unstandardised network trains badly on."""
    rng = np.random.default_rng(seed)
    labels = SPECIES[np.arange(n) % 3]
    centers = {"setosa": [0, 0, 0], "versicolor": [3, 0, 1], "virginica": [0, 3, -1]}
    X = np.array([centers[label] for label in labels]) + 0.5 * rng.normal(size=(n, 3))
    X[:, 2] = 100 * X[:, 2] + 500
    return np.round(X, 3), labels


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def species_csv(path, n=90, seed=0, columns=(*FEATURES, "species")):
    X, labels = species_data(n, seed)
    values = dict(zip(FEATURES, X.T), species=labels)
    write_csv(path, columns, zip(*(values[c] for c in columns)))
    return X, labels


def read_csv_text(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


@pytest.fixture
def species_model(tmp_path, capsys):
    """A classifier trained by ``gpunet train`` on a CSV with a header and text labels."""
    data = tmp_path / "species.csv"
    X, labels = species_csv(data)
    model = tmp_path / "species.npz"
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST, "--save", model], capsys)
    assert code == 0, err
    return model, data, X, labels, out


# ---- CSV with a header and a text target: train, predict, evaluate ---------------------------------
def test_train_on_a_csv_keeps_labels_names_scaling_and_target(species_model):
    model, data, X, labels, out = species_model
    assert "target column 'species' (classify, 3 classes, auto: text labels), standardised" in out
    assert "72 train / 18 test, 3 features" in out
    assert reported(out, "test accuracy") >= 0.9
    net = gn.MLP.load(model)
    assert net.classes.tolist() == SPECIES.tolist()
    assert net.feature_names == FEATURES
    assert net.metadata == {"target": "species", "task": "classify", "data": "species.csv"}
    assert net.sizes == [3, 16, 3] and net.loss_fn.name == "cross_entropy"
    # the model learned the scaling from the training rows (the third column is in the hundreds)
    assert net.input_scaling is not None
    assert abs(float(np.asarray(net.input_scaling.mean)[2]) - 500) < 60


def test_predict_writes_the_original_labels_and_evaluate_prints_the_models_accuracy(species_model, capsys):
    model, data, X, labels, _ = species_model
    net = gn.MLP.load(model)
    code, out, err = run_main(["predict", model, data], capsys)
    assert code == 0, err
    header, rows = read_csv_text(out)
    assert header == ["species"]
    assert [row[0] for row in rows] == net.predict(X).tolist()      # raw features: the model scales them
    assert {row[0] for row in rows} == set(SPECIES)

    code, out, err = run_main(["evaluate", model, data], capsys)
    assert code == 0, err
    assert "data " + str(data) + ": 90 rows, target column 'species'" in out
    assert reported(out, "accuracy") == round(net.score(X, labels), 4)
    assert reported(out, "loss (cross_entropy)") == pytest.approx(
        float(net.evaluate_loss(net.features(X), net.targets(labels, len(X)), include_decay=False)), abs=1e-4)
    matrix = re.search(r"^setosa +(\d+) +(\d+) +(\d+)$", out, re.MULTILINE)
    predicted = net.predict(X)
    assert [int(c) for c in matrix.groups()] == [int(np.sum((labels == "setosa") & (predicted == s))) for s in SPECIES]
    assert re.search(r"^virginica +30 +[01]\.\d{4} +[01]\.\d{4}$", out, re.MULTILINE)


def test_predict_takes_columns_by_name_and_ignores_the_target_column(species_model, tmp_path, capsys):
    model, data, X, labels, _ = species_model
    shuffled = species_csv(tmp_path / "shuffled.csv", columns=("width", "species", "sepal", "petal"))
    unlabelled = species_csv(tmp_path / "unlabelled.csv", columns=("petal", "width", "sepal"))
    assert np.array_equal(shuffled[0], X) and np.array_equal(unlabelled[0], X)
    outputs = []
    for path in (data, tmp_path / "shuffled.csv", tmp_path / "unlabelled.csv"):
        code, out, err = run_main(["predict", model, path], capsys)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("columns, message", [
    (("sepal", "width", "species"), "lacks the column(s) 'petal'"),
    (("sepal", "petal", "width", "colour", "species"), "has the column(s) 'colour', which are not features"),
])
def test_predict_names_a_missing_or_an_extra_column(species_model, tmp_path, capsys, columns, message):
    model = species_model[0]
    X, labels = species_data()
    values = dict(zip(FEATURES, X.T), species=labels, colour=np.ones(len(X)))
    path = write_csv(tmp_path / "other.csv", columns, zip(*(values[c] for c in columns)))
    code, out, err = run_main(["predict", model, path], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"gpunet predict: error: {path} ") and message in err
    assert "the features are: 'sepal', 'petal', 'width'" in err


def test_predict_proba_has_a_column_per_label_and_rows_that_sum_to_one(species_model, tmp_path, capsys):
    model, data, X, _, _ = species_model
    net = gn.MLP.load(model)
    code, out, err = run_main(["predict", model, data, "--proba"], capsys)
    assert code == 0, err
    header, rows = read_csv_text(out)
    assert header == ["proba_setosa", "proba_versicolor", "proba_virginica"]
    probabilities = np.array(rows, dtype=np.float64)
    assert probabilities.shape == (90, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, net.predict_proba(X), rtol=1e-6)
    assert SPECIES[probabilities.argmax(axis=1)].tolist() == net.predict(X).tolist()

    code, out, err = run_main(["predict", model, data, "--proba", "-o", tmp_path / "p.npy"], capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy", allow_pickle=False), probabilities, rtol=1e-6)
    assert f"wrote 90 row(s) of probabilities to {tmp_path / 'p.npy'}" in err


def test_predict_writes_csv_and_npy_files(species_model, tmp_path, capsys):
    model, data, X, _, _ = species_model
    expected = gn.MLP.load(model).predict(X)
    code, out, err = run_main(["predict", model, data, "-o", tmp_path / "out.csv"], capsys)
    assert code == 0 and out == "", err
    assert f"wrote 90 row(s) of predictions to {tmp_path / 'out.csv'}" in err
    assert (tmp_path / "out.csv").read_text() == "species\n" + "".join(f"{label}\n" for label in expected)
    code, out, err = run_main(["predict", model, data, "-o", tmp_path / "out.npy"], capsys)
    assert code == 0, err
    saved = np.load(tmp_path / "out.npy", allow_pickle=False)      # a str array, no pickle
    assert saved.dtype.kind == "U" and saved.tolist() == expected.tolist()
    code, out, err = run_main(["predict", model, data, "-o", tmp_path / "out.json"], capsys)
    assert code == 2 and "write predictions to .csv, .npy, .parquet" in err


def test_evaluate_names_a_label_the_model_does_not_know(species_model, tmp_path, capsys):
    model = species_model[0]
    X, labels = species_data(9)
    labels = labels.copy()
    labels[4] = "unicorn"
    path = write_csv(tmp_path / "new.csv", [*FEATURES, "species"], zip(*X.T, labels))
    code, out, err = run_main(["evaluate", model, path], capsys)
    assert code == 2
    assert f"{path} column 'species' has label(s) the model does not know: 'unicorn'" in err


def test_standardisation_can_be_turned_off(tmp_path, capsys):
    data = tmp_path / "species.csv"
    species_csv(data)
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST, "--no-standardize",
                               "--save", tmp_path / "raw.npz"], capsys)
    assert code == 0, err
    assert "standardised" not in out
    assert gn.MLP.load(tmp_path / "raw.npz").input_scaling is None


# ---- other layouts and formats ------------------------------------------------------------------------
def test_headerless_csv_with_a_target_index(tmp_path, capsys):
    X, labels = species_data()
    codes = np.searchsorted(SPECIES, labels)                      # whole numbers 0, 1, 2
    data = write_csv(tmp_path / "plain.csv", None, zip(*X.T, codes))
    model = tmp_path / "plain.npz"
    code, out, err = run_main(["train", "--data", data, "--target", "-1", *FAST, "--save", model], capsys)
    assert code == 0, err
    assert "target column 3 (classify, 3 classes, auto: 3 distinct whole numbers)" in out
    net = gn.MLP.load(model)
    assert net.feature_names is None and net.classes.tolist() == [0, 1, 2]
    assert net.metadata["target"] == 3
    # the training file (target included: one column more than the features) and one without it
    features_only = write_csv(tmp_path / "features.csv", None, X)
    outputs = [run_main(["predict", model, path], capsys) for path in (data, features_only)]
    assert outputs[0] == outputs[1] and outputs[0][0] == 0
    header, rows = read_csv_text(outputs[0][1])
    assert header == ["prediction"] and [int(r[0]) for r in rows] == net.predict(X).tolist()
    code, out, err = run_main(["evaluate", model, data], capsys)
    assert code == 0, err
    assert reported(out, "accuracy") == round(net.score(X, codes), 4)
    # a name means nothing in a file without a header
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST], capsys)
    assert code == 2 and "has no column names (no header row), so a column is chosen by index (0..3" in err


def test_headerless_csv_with_text_labels_is_not_taken_for_a_header(tmp_path):
    X, labels = species_data(6)
    table = read_table(write_csv(tmp_path / "plain.csv", None, zip(*X.T, labels)), -1)
    assert not table.named_columns and table.feature_names == ["column_0", "column_1", "column_2"]
    assert table.y.tolist() == labels.tolist() and np.array_equal(table.X, X)


def test_npy_table_with_a_target_column(tmp_path, capsys):
    X, labels = species_data()
    np.save(tmp_path / "train.npy", np.column_stack([np.searchsorted(SPECIES, labels), X]))
    np.save(tmp_path / "new.npy", X)
    model = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", tmp_path / "train.npy", "--target", "0", *FAST,
                               "--save", model], capsys)
    assert code == 0, err
    assert reported(out, "test accuracy") >= 0.9
    net = gn.MLP.load(model)
    assert net.classes.tolist() == [0, 1, 2]          # whole floats became integer labels
    code, out, err = run_main(["predict", model, tmp_path / "new.npy", "-o", tmp_path / "pred.npy"], capsys)
    assert code == 0, err
    predicted = np.load(tmp_path / "pred.npy")
    assert predicted.dtype.kind == "i" and predicted.tolist() == net.predict(X).tolist()


def test_npz_with_x_and_text_labels_y(tmp_path, capsys):
    X, labels = species_data()
    np.savez(tmp_path / "train.npz", X=X, y=labels)
    model = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", tmp_path / "train.npz", "--target", "y", *FAST,
                               "--save", model], capsys)
    assert code == 0, err
    assert "target column 'y' (classify, 3 classes, auto: text labels)" in out
    net = gn.MLP.load(model)
    assert net.classes.tolist() == SPECIES.tolist() and net.feature_names is None
    code, out, err = run_main(["predict", model, tmp_path / "train.npz", "-o", tmp_path / "p.csv"], capsys)
    assert code == 0, err
    assert (tmp_path / "p.csv").read_text().splitlines() == ["y", *net.predict(X).tolist()]
    code, out, err = run_main(["evaluate", model, tmp_path / "train.npz"], capsys)
    assert code == 0, err
    assert reported(out, "accuracy") == round(net.score(X, labels), 4)


def test_numpy_files_are_never_unpickled(tmp_path, capsys):
    np.save(tmp_path / "objects.npy", np.array([[1, "a"], [2, "b"]], dtype=object))
    (tmp_path / "pickled.npy").write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    for name, message in (("objects.npy", "holds Python objects (an object array), which gpunet does not load"),
                          ("pickled.npy", "is not a NumPy .npy or .npz file (a pickle is never loaded)")):
        code, out, err = run_main(["train", "--data", tmp_path / name, "--target", "0", *FAST], capsys)
        assert code == 2 and message in err and "Traceback" not in err


def test_regression_csv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    price = np.round(2 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] ** 2 + 10, 4)
    data = write_csv(tmp_path / "houses.csv", ["rooms", "age", "distance", "price"], zip(*X.T, price))
    model = tmp_path / "houses.npz"
    code, out, err = run_main(["train", "--data", data, "--target", "price", "--no-progress", "--epochs", "40",
                               "--hidden", "32", "--lr", "0.01", "--save", model], capsys)
    assert code == 0, err
    assert "target column 'price' (regress, auto: fractional values)" in out
    assert reported(out, "test R^2") > 0.8
    net = gn.MLP.load(model)
    assert net.classes is None and net.loss_fn.name == "mse" and net.metadata["task"] == "regress"
    code, out, err = run_main(["evaluate", model, data], capsys)
    assert code == 0, err
    predictions = net.predict(X)[:, 0]
    assert reported(out, "R^2") == round(net.score(X, price), 4)
    assert reported(out, "MSE") == pytest.approx(np.mean((predictions - price) ** 2), rel=1e-4)
    assert reported(out, "MAE") == pytest.approx(np.mean(np.abs(predictions - price)), rel=1e-4)
    code, out, err = run_main(["predict", model, data, "--proba"], capsys)
    assert code == 2 and "--proba is for classifiers" in err and "regressor" in err
    code, out, err = run_main(["predict", model, data], capsys)
    header, rows = read_csv_text(out)
    assert header == ["price"]
    np.testing.assert_allclose([float(r[0]) for r in rows], predictions, rtol=1e-6)


def test_parquet_with_named_and_positional_targets(tmp_path, capsys):
    pytest.importorskip("pyarrow", reason="pyarrow is needed for Parquet")
    pd = pytest.importorskip("pandas", reason="pandas is needed for Parquet")
    X, labels = species_data()
    frame = pd.DataFrame({**dict(zip(FEATURES, X.T)), "species": labels})
    frame.to_parquet(tmp_path / "train.parquet", index=False)
    frame[["width", "sepal", "petal"]].to_parquet(tmp_path / "new.parquet", index=False)
    model = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", tmp_path / "train.parquet", "--target", "species", *FAST,
                               "--save", model], capsys)
    assert code == 0, err
    net = gn.MLP.load(model)
    assert net.feature_names == FEATURES and net.classes.tolist() == SPECIES.tolist()
    code, out, err = run_main(["predict", model, tmp_path / "new.parquet", "-o", tmp_path / "p.parquet"], capsys)
    assert code == 0, err
    assert pd.read_parquet(tmp_path / "p.parquet")["species"].tolist() == net.predict(X).tolist()
    code, out, err = run_main(["evaluate", model, tmp_path / "train.parquet"], capsys)
    assert reported(out, "accuracy") == round(net.score(X, labels), 4)
    # a column index that is not a column name chooses by position
    code, out, err = run_main(["train", "--data", tmp_path / "train.parquet", "--target", "-1", *FAST], capsys)
    assert code == 0, err
    assert "target column 'species'" in out


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, capsys, monkeypatch):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)        # an import of it fails
    code, out, err = run_main(["train", "--data", tmp_path / "data.parquet", "--target", "y", *FAST], capsys)
    assert code == 2
    assert "Parquet files need pandas and pyarrow" in err and "pip install 'gpunet[parquet]'" in err


# ---- bad files ------------------------------------------------------------------------------------------
def test_a_missing_target_column_lists_the_columns(tmp_path, capsys):
    data = tmp_path / "species.csv"
    species_csv(data)
    code, out, err = run_main(["train", "--data", data, "--target", "price", *FAST], capsys)
    assert code == 2 and out == ""
    assert err == f"gpunet train: error: {data} has no column 'price'; its columns are: sepal, petal, width, species\n"


def test_a_non_numeric_feature_column_is_named_with_an_example(tmp_path, capsys):
    X, labels = species_data(6)
    colour = ["red", "blue", "red", "green", "red", "blue"]
    data = write_csv(tmp_path / "c.csv", [*FEATURES, "colour", "species"], zip(*X.T, colour, labels))
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST], capsys)
    assert code == 2
    assert "the feature column 'colour' is not numeric: row 1 (line 2) holds 'red'" in err
    assert "Encode it as numbers" in err and "drop the column" in err


def nan_rows_csv(path):
    X, labels = species_data()
    rows = [[*map(str, x), label] for x, label in zip(X, labels)]
    rows[1][1] = ""          # row 2 (line 3): petal empty
    rows[6][1] = "NaN"       # row 7 (line 8): petal NaN
    rows[6][2] = "NA"        #                 and width
    write_csv(path, [*FEATURES, "species"], rows)
    return X, labels


def test_missing_values_name_rows_and_columns_and_drop_missing_drops_them(tmp_path, capsys):
    data = tmp_path / "gaps.csv"
    X, labels = nan_rows_csv(data)
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST], capsys)
    assert code == 2
    assert f"{data} has missing (or infinite) values in 2 row(s), in columns 'petal', 'width': " \
           "row 2 (line 3) in column 'petal'; row 7 (line 8) in columns 'petal', 'width'" in err
    assert "--drop-missing" in err
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST, "--drop-missing",
                               "--save", tmp_path / "m.npz"], capsys)
    assert code == 0, err
    assert f"dropped 2 row(s) of {data} with missing values (rows 2, 7); 88 left" in out
    assert "70 train / 18 test" in out
    # predict keeps the order of the rows left
    code, out, err = run_main(["predict", tmp_path / "m.npz", data, "--drop-missing"], capsys)
    assert code == 0 and "dropped 2 row(s)" in err
    kept = np.delete(np.arange(90), [1, 6])
    assert read_csv_text(out)[1] == [[v] for v in gn.MLP.load(tmp_path / "m.npz").predict(X[kept]).tolist()]


def test_a_missing_target_value_is_named(tmp_path, capsys):
    X, labels = species_data(12)
    labels = labels.tolist()
    labels[3] = ""
    data = write_csv(tmp_path / "t.csv", [*FEATURES, "species"], zip(*X.T, labels))
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST], capsys)
    assert code == 2 and "the target column 'species' is missing in 1 row(s): row 4 (line 5)" in err


def test_a_ragged_csv_names_the_line(tmp_path, capsys):
    data = tmp_path / "ragged.csv"
    data.write_text("a,b,y\n1,2,0\n3,4,1,9\n5,6,0\n")
    code, out, err = run_main(["train", "--data", data, "--target", "y", *FAST], capsys)
    assert code == 2 and f"{data}: line 3 has 4 field(s) but the header has 3" in err
    data.write_text("a,b,y\n1,2,0\n3,4\n")
    code, out, err = run_main(["train", "--data", data, "--target", "y", *FAST], capsys)
    assert code == 2 and f"{data}: line 3 has 2 field(s) but the header has 3" in err


def test_empty_files_and_header_only_files_are_refused(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    code, out, err = run_main(["train", "--data", tmp_path / "empty.csv", "--target", "y", *FAST], capsys)
    assert code == 2 and "empty.csv is empty" in err
    code, out, err = run_main(["train", "--data", tmp_path / "header.csv", "--target", "y", *FAST], capsys)
    assert code == 2 and "header.csv has a header but no data rows" in err


def test_targets_that_cannot_be_learned_are_refused(tmp_path, capsys):
    X, labels = species_data(30)
    one_class = write_csv(tmp_path / "one.csv", [*FEATURES, "species"], zip(*X.T, ["setosa"] * 30))
    code, out, err = run_main(["train", "--data", one_class, "--target", "species", *FAST], capsys)
    assert code == 2 and "has a single class ('setosa'): there is nothing to tell apart" in err
    rare = labels.copy()
    rare[0] = "unicorn"       # one row: a test share over one half puts it in the test split
    data = write_csv(tmp_path / "rare.csv", [*FEATURES, "species"], zip(*X.T, rare))
    code, out, err = run_main(["train", "--data", data, "--target", "species", "--test-size", "0.6", *FAST], capsys)
    assert code == 2 and "--test-size 0.6 leaves no training row for the class(es) 'unicorn' (1 row)" in err
    code, out, err = run_main(["train", "--data", data, "--target", "species", "--task", "regress", *FAST], capsys)
    assert code == 2 and "holds text labels (such as 'unicorn'), which cannot be regressed" in err


def test_file_options_and_bundled_datasets_do_not_mix(tmp_path, capsys):
    code, out, err = run_main(["train", "--dataset", "spirals", "--target", "y", *FAST], capsys)
    assert code == 2 and "--target applies to a data file only" in err
    code, out, err = run_main(["train", "--data", tmp_path / "x.csv", "--dataset", "spirals", *FAST], capsys)
    assert code == 2 and "not allowed with argument" in err
    code, out, err = run_main(["train", "--data", tmp_path / "x.csv", *FAST], capsys)
    assert code == 2 and "--data needs --target COLUMN" in err


# ---- both CSV readers ------------------------------------------------------------------------------------
TRICKY_CSV = ('sepal,"petal", width,species\n'
              '1.5,2,300,setosa\n'
              '\n'                                   # a blank line: skipped, the line count goes on
              '2.5,,310,"vers,icolor"\n'             # a missing value; a quoted delimiter
              '3.5,4,NA,virginica\n'
              '4.5,5,330,setosa\n')


def hide_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)     # import pandas fails: the csv module reads


def test_the_stdlib_reader_reads_as_pandas_does(tmp_path, monkeypatch):
    pytest.importorskip("pandas", reason="the comparison needs pandas")
    path = tmp_path / "tricky.csv"
    path.write_text(TRICKY_CSV)
    results = []
    for without_pandas in (False, True):
        if without_pandas:
            hide_pandas(monkeypatch)
        table = read_table(path, "species", drop_missing=True)
        with pytest.raises(ValueError) as missing:
            read_table(path, "species")
        results.append((table, str(missing.value)))
    (with_pandas, message), (with_stdlib, stdlib_message) = results
    assert with_stdlib.feature_names == with_pandas.feature_names == ["sepal", "petal", "width"]
    np.testing.assert_array_equal(with_stdlib.X, with_pandas.X)
    assert with_stdlib.X.tolist() == [[1.5, 2, 300], [4.5, 5, 330]]
    assert with_stdlib.y.tolist() == with_pandas.y.tolist() == ["setosa", "setosa"]
    assert with_stdlib.dropped_rows == with_pandas.dropped_rows == [2, 3]
    assert stdlib_message == message
    assert "row 2 (line 4) in column 'petal'; row 3 (line 5) in column 'width'" in message


def test_train_predict_evaluate_without_pandas(tmp_path, capsys, monkeypatch):
    hide_pandas(monkeypatch)
    data = tmp_path / "species.csv"
    X, labels = species_csv(data)
    model = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", data, "--target", "species", *FAST, "--save", model], capsys)
    assert code == 0, err
    net = gn.MLP.load(model)
    assert net.feature_names == FEATURES and net.classes.tolist() == SPECIES.tolist()
    expected = (["species"], [[label] for label in net.predict(X).tolist()])
    species_csv(tmp_path / "reordered.csv", columns=("petal", "species", "width", "sepal"))
    for path in (data, tmp_path / "reordered.csv"):
        code, out, err = run_main(["predict", model, path], capsys)
        assert code == 0, err
        assert read_csv_text(out) == expected
    code, out, err = run_main(["evaluate", model, data], capsys)
    assert reported(out, "accuracy") == round(net.score(X, labels), 4)


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    """``gpunet evaluate ... | head -1``: the command stops without an error once its reader
    has gone (many rows of output, the pipe closed after the first line)."""
    import os
    import subprocess
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    rows = [[*map(float, x), "yes" if x[0] > 0 else "no"] for x in X]
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "kind"], rows)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(data), "--target", "kind", "--epochs", "1", "--hidden", "4",
                 "--no-progress", "--save", str(model)]) == 0
    env = dict(os.environ, GPUNET_BACKEND="numpy")
    for command in (["predict", str(model), str(data)], ["evaluate", str(model), str(data)]):
        child = subprocess.Popen([sys.executable, "-m", "gpunet.cli", *command], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
        child.stdout.readline()
        child.stdout.close()                      # the reader leaves
        err = child.stderr.read().decode()
        assert child.wait(timeout=120) == 0, err
        assert "error" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
