"""The backend switch: set_backend / get_backend / use_backend / GPUNET_BACKEND / to_numpy.

A missing GPU is simulated by replacing ``gpu_status``, so the fallback paths are tested on
every machine; the tests that need the real answer read it from conftest's GPU_OK.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
import gpunet.backend as backend_module
from conftest import GPU_OK, GPU_WHY

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_GPU_REASON = "CuPy is not importable (simulated for this test)"


@pytest.fixture(autouse=True)
def restore_active_backend(monkeypatch):
    """Every test here may switch backends; monkeypatch puts the previous one back."""
    monkeypatch.setattr(backend_module, "_default", backend_module._default)
    monkeypatch.delenv("GPUNET_BACKEND", raising=False)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(backend_module, "gpu_status", lambda: (False, NO_GPU_REASON))


@pytest.fixture
def fresh(monkeypatch):
    """As if gpunet had just been imported: no backend chosen yet."""
    monkeypatch.setattr(backend_module, "_default", None)


# ---- set / get ------------------------------------------------------------------------------------
def test_numpy_backend_has_name_and_array_module():
    chosen = gn.set_backend("numpy")
    assert chosen.name == "numpy" and chosen.xp is np
    assert gn.get_backend() is chosen


@pytest.mark.parametrize("spelling", ["NumPy", "NUMPY", " numpy ", "numpy\n"])
def test_backend_names_ignore_case_and_surrounding_space(spelling):
    assert gn.set_backend(spelling).name == "numpy"
    with gn.use_backend(spelling) as chosen:
        assert chosen.name == "numpy"


@pytest.mark.parametrize("spelling", ["auto", "AUTO", "Auto"])
def test_auto_accepts_any_case(no_gpu, spelling):
    assert gn.set_backend(spelling).name == "numpy"


def test_set_backend_defaults_to_auto(no_gpu):
    assert gn.set_backend().name == "numpy"


def test_models_keep_the_backend_they_were_built_on():
    with gn.use_backend("numpy") as numpy_backend:
        net = gn.MLP([3, 4, 2], seed=0)
    assert net.backend is numpy_backend
    assert isinstance(net.forward(np.ones((2, 3))), np.ndarray)


# ---- auto: quiet fallback ---------------------------------------------------------------------------
def test_auto_falls_back_to_numpy_with_a_log_record_and_no_warning(no_gpu, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="gpunet"):
        warnings.simplefilter("always")
        chosen = gn.set_backend("auto")
    assert chosen.name == "numpy"
    assert caught == [], f"auto fallback warned: {[str(w.message) for w in caught]}"
    records = [r for r in caplog.records if r.name == "gpunet" and NO_GPU_REASON in r.getMessage()]
    assert records, "the fallback left no log record with its reason"
    assert all(r.levelno < logging.WARNING for r in records)


def test_first_use_without_a_choice_is_auto_and_quiet(no_gpu, fresh, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="gpunet"):
        warnings.simplefilter("always")
        chosen = gn.get_backend()
    assert chosen.name == "numpy" and caught == []
    assert any(NO_GPU_REASON in r.getMessage() for r in caplog.records)


@pytest.mark.real_cupy   # the fresh interpreter finds a GPU only where CuPy has one
def test_import_and_first_use_emit_no_warning_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GPUNET_BACKEND", None)
    code = "import gpunet as gn; print(gn.get_backend().name); gn.MLP([2, 2]).forward([[1.0, 2.0]])"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == ("cupy" if GPU_OK else "numpy")


# ---- explicit cupy without a GPU ----------------------------------------------------------------------
def test_explicit_cupy_without_gpu_raises_with_the_reason(no_gpu):
    with gn.use_backend("numpy") as before:
        for attempt in (lambda: gn.set_backend("cupy"), lambda: gn.use_backend("CuPy").__enter__()):
            with pytest.raises(RuntimeError, match=f"no GPU is usable: {re.escape(NO_GPU_REASON)}"):
                attempt()
            assert gn.get_backend() is before


@pytest.mark.skipif(GPU_OK, reason="a GPU is usable here, so 'cupy' must succeed")
def test_explicit_cupy_on_this_machine_raises_the_real_reason():
    with pytest.raises(RuntimeError, match="no GPU is usable") as info:
        gn.set_backend("cupy")
    assert GPU_WHY in str(info.value)


@pytest.mark.gpu
def test_cupy_backend_when_a_gpu_works():
    import cupy
    chosen = gn.set_backend("cupy")
    assert chosen.name == "cupy" and chosen.xp is cupy
    assert gn.set_backend("auto").name == "cupy"
    device = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
    host = gn.to_numpy(device)
    assert type(host) is np.ndarray and host.dtype == np.float32
    np.testing.assert_array_equal(host, np.arange(6, dtype=np.float32).reshape(2, 3))
    net = gn.MLP([3, 4, 2], seed=0)
    assert isinstance(net.forward(host), cupy.ndarray)


# ---- GPUNET_BACKEND ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["numpy", "NumPy", " numpy "])
def test_environment_variable_picks_the_backend_on_first_use(fresh, monkeypatch, value):
    monkeypatch.setenv("GPUNET_BACKEND", value)
    assert gn.get_backend().name == "numpy"


@pytest.mark.parametrize("value", ["auto", ""])
def test_environment_variable_auto_or_empty_means_auto(no_gpu, fresh, monkeypatch, value):
    monkeypatch.setenv("GPUNET_BACKEND", value)
    assert gn.get_backend().name == "numpy"


def test_environment_variable_is_read_once(fresh, monkeypatch):
    monkeypatch.setenv("GPUNET_BACKEND", "numpy")
    first = gn.get_backend()
    monkeypatch.setenv("GPUNET_BACKEND", "nonsense")
    assert gn.get_backend() is first


def test_set_backend_overrides_the_environment_variable(fresh, monkeypatch):
    monkeypatch.setenv("GPUNET_BACKEND", "nonsense")
    assert gn.set_backend("numpy").name == "numpy"
    assert gn.get_backend().name == "numpy"


def test_unknown_environment_value_is_reported_under_its_name(fresh, monkeypatch):
    monkeypatch.setenv("GPUNET_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"GPUNET_BACKEND='gpu': unknown backend 'gpu'; choose from auto, numpy, cupy"):
        gn.get_backend()
    assert not backend_module.default_backend_chosen()   # nothing half-chosen


def test_environment_cupy_without_gpu_raises_with_the_reason(no_gpu, fresh, monkeypatch):
    monkeypatch.setenv("GPUNET_BACKEND", "cupy")
    with pytest.raises(RuntimeError, match=f"GPUNET_BACKEND='cupy'.*{re.escape(NO_GPU_REASON)}"):
        gn.get_backend()


def test_environment_variable_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GPUNET_BACKEND": "NUMPY"}
    code = "import gpunet as gn; print(gn.get_backend().name, gn.MLP([2, 2]).backend.name)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "numpy"]


# ---- use_backend ---------------------------------------------------------------------------------
def test_use_backend_selects_for_the_block_and_restores():
    outer = gn.set_backend("numpy")
    with gn.use_backend("numpy") as inner:
        assert gn.get_backend() is inner and inner is not outer
        with gn.use_backend("numpy") as innermost:
            assert gn.get_backend() is innermost
        assert gn.get_backend() is inner
    assert gn.get_backend() is outer


def test_use_backend_restores_after_an_exception():
    outer = gn.set_backend("numpy")
    with pytest.raises(KeyError):
        with gn.use_backend("numpy"):
            raise KeyError("boom")
    assert gn.get_backend() is outer


def test_set_backend_inside_use_backend_sets_the_process_default(no_gpu):
    """The block keeps its own selection; set_backend changes the default that applies
    outside every block (in every thread), which the block's exit does not undo."""
    gn.set_backend("numpy")
    with gn.use_backend("numpy") as scoped:
        new_default = gn.set_backend("auto")
        assert gn.get_backend() is scoped
    assert gn.get_backend() is new_default


def test_use_backend_on_a_fresh_session_leaves_the_choice_open(fresh, monkeypatch):
    with gn.use_backend("numpy"):
        pass
    assert not backend_module.default_backend_chosen()
    monkeypatch.setenv("GPUNET_BACKEND", "numpy")
    assert gn.get_backend().name == "numpy"    # first use still reads the variable


def test_failed_use_backend_keeps_the_current_backend():
    outer = gn.set_backend("numpy")
    with pytest.raises(ValueError, match="unknown backend"):
        with gn.use_backend("jax"):
            pass  # pragma: no cover - never entered
    assert gn.get_backend() is outer


# ---- to_numpy ---------------------------------------------------------------------------------------
def test_to_numpy_on_host_values():
    arr = np.arange(6.0).reshape(2, 3)
    out = gn.to_numpy(arr)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, arr)
    assert gn.to_numpy([[1, 2], [3, 4]]).shape == (2, 2)
    assert gn.to_numpy(3.5) == 3.5
    net = gn.MLP([3, 2], dtype="float64", seed=0)
    flat = gn.to_numpy(net.flat_params)
    assert type(flat) is np.ndarray and flat.dtype == np.float64 and flat.shape == (net.n_params,)


def test_to_numpy_on_every_backend(backend):
    device = backend.asarray(np.arange(5, dtype=np.float32))
    host = gn.to_numpy(device)
    assert type(host) is np.ndarray and host.dtype == np.float32
    np.testing.assert_array_equal(host, np.arange(5, dtype=np.float32))
