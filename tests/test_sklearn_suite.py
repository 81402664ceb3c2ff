"""scikit-learn's own tests of its MLP estimators, run against ``gpunet.sklearn``.

The installed scikit-learn's ``sklearn/neural_network/tests/test_mlp.py`` is copied with one
change, its import of MLPClassifier and MLPRegressor, and run in a fresh pytest process with
scikit-learn's conftest (its ``global_random_seed`` fixture). On NumPy always; on CuPy too
where a GPU works, and under the kernel emulator (``-p emulator.plugin``), whose CuPy the
process inherits. Skipped without scikit-learn or when its wheel ships without tests.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKENDS

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed")

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
THE_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
# how many of the file's tests gpunet passes, of how many (with pandas; without it the two
# feature-name tests skip): every test, with no deliberate exception
MIN_PASSED = 57


def _counts(output: str) -> dict:
    last = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", last)}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_scikit_learns_mlp_tests_pass_on_gpunet(backend, tmp_path):
    if not SOURCE.is_file():
        pytest.skip(f"this scikit-learn ships without its tests ({SOURCE} is missing)")
    text = SOURCE.read_text(encoding="utf-8")
    assert text.count(THE_IMPORT) == 1, "scikit-learn's test file no longer imports the estimators as expected"
    copy = tmp_path / "test_mlp_on_gpunet.py"
    copy.write_text(text.replace(THE_IMPORT, "from gpunet.sklearn import MLPClassifier, MLPRegressor"),
                    encoding="utf-8")
    env = {**os.environ, "GPUNET_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    plugins = ["-p", "sklearn.conftest"]
    if "emulator.plugin" in sys.modules:
        plugins += ["-p", "emulator.plugin"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "-rfEs",
                             str(copy)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1500)
    counts = _counts(result.stdout)
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    assert failed == 0 and counts.get("passed", 0) >= MIN_PASSED, result.stdout[-6000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("pandas" in line for line in skipped), skipped
