"""Data as users have it: Fortran-ordered, strided, big-endian, float64 for a float32 model,
lists and pandas DataFrames train exactly as the C-ordered array does, converted once per
fit (peak memory: one converted copy), checked in chunks (no full-size temporaries), and a
DataFrame's bad column is named. Speed against C order is the benchmark suite's
``fit_layouts`` case."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpunet as gn
from gpunet.validation import check_features


def _data(n=600, k=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)).astype(np.float32), rng.integers(0, 3, n)


LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
    "reversed rows": lambda X: X[::-1].copy()[::-1],
    "big-endian": lambda X: X.astype(">f4"),
    "float64": lambda X: X.astype(np.float64),
    "list": lambda X: X.tolist(),
}


def _fit(X, y, backend):
    net = gn.MLP([12, 16, 3], dtype="float32", seed=1, backend=backend)
    history = net.fit(X, y, epochs=2, batch_size=64, lr=0.05, momentum=0.9, progress=False)
    return gn.to_numpy(net.flat_params), history["loss"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_any_layout_trains_as_the_c_ordered_array(backend, layout):
    X, y = _data()
    want = _fit(X, y, backend.name)
    got = _fit(LAYOUTS[layout](X), y, backend.name)
    assert got[0].tobytes() == want[0].tobytes() and got[1] == want[1]


def test_a_dataframe_trains_as_its_array(backend):
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    X, y = _data()
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    frame["f3"] = (frame["f3"] * 0).astype(np.int64) + np.arange(len(frame)) % 4    # a mixed-dtype frame
    X_mixed = frame.to_numpy(dtype=np.float32)
    assert _fit(frame, y, backend.name)[0].tobytes() == _fit(X_mixed, y, backend.name)[0].tobytes()
    assert _fit(pd.DataFrame(X), pd.Series(y), backend.name)[0].tobytes() == _fit(X, y, backend.name)[0].tobytes()


def test_a_dataframe_names_its_bad_column():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    net = gn.MLP([3, 4, 2], dtype="float32", seed=0)
    before = gn.to_numpy(net.flat_params).copy()
    frames = {"not numeric": pd.DataFrame({"a": [1.0, 2.0], "city": ["x", "y"], "c": [0.5, 1.0]}),
              "NaN": pd.DataFrame({"a": [1.0, np.nan], "b": [1.0, 2.0], "c": [0.5, 1.0]}),
              "beyond float32": pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [0.5, 1e300]})}
    words = {"not numeric": "column 'city' is not numeric", "NaN": "column 'a' contains 1 NaN",
             "beyond float32": "column 'c' has values beyond the float32 range"}
    for case, frame in frames.items():
        with pytest.raises((TypeError, ValueError), match=words[case]):
            net.fit(frame, [0, 1], epochs=1, progress=False)
    assert np.array_equal(gn.to_numpy(net.flat_params), before)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["fortran", "float64", "strided"])
def test_one_conversion_per_fit_at_most(layout):
    """A fit of a 40000 x 50 input converts it once: the peak of extra memory stays within
    one float32 copy (8 MB) and what the training itself needs."""
    X, y = _data(n=40_000, k=50)
    data = LAYOUTS[layout](X)
    net = gn.MLP([50, 8, 3], dtype="float32", seed=0)
    net.fit(X[:64], y[:64], epochs=1, batch_size=64, progress=False)     # warm: workspaces, imports
    baseline = _peak_bytes(lambda: net.fit(X, y, epochs=1, batch_size=4096, shuffle=False, progress=False))
    peak = _peak_bytes(lambda: net.fit(data, y, epochs=1, batch_size=4096, shuffle=False, progress=False))
    assert peak <= baseline + X.nbytes * 1.1, (peak, baseline, X.nbytes)


def test_input_checks_make_no_full_size_temporaries():
    """float64 data for a float32 model: the finite and range checks read it in chunks; the
    only full-size allocation is the float32 copy the model trains on."""
    X = np.random.default_rng(0).standard_normal((200_000, 20))     # 32 MB
    peak = _peak_bytes(lambda: check_features(X, 20, dtype=np.float32))
    assert peak < X.nbytes / 2 + X.nbytes / 8, peak
    assert _peak_bytes(lambda: check_features(X, 20, dtype=np.float64)) < X.nbytes / 8   # no copy at all
    bad = X.copy()
    bad[123_456, 7] = np.inf
    with pytest.raises(ValueError, match="contains 1 NaN or infinite"):
        check_features(bad, 20, dtype=np.float32)
    bad[123_456, 7] = 1e300
    with pytest.raises(ValueError, match="beyond the float32 range"):
        check_features(bad, 20, dtype=np.float32)
    check_features(bad, 20, dtype=np.float64)        # in range for a float64 model
