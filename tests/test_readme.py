"""The README stays true: its runnable example runs, and CI runs the test command it gives."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def test_the_library_example_runs_and_reaches_its_accuracy(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")     # the example loads the digits
    example = next(b for b in _blocks("python") if b.startswith("import gpunet as gn"))
    monkeypatch.chdir(tmp_path)         # it saves digits.npz
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
    printed = out.getvalue().split("\n")
    assert float(printed[0]) >= 0.96, printed        # "accuracy, ~0.97"
    assert float(printed[1]) < 1e-5, printed         # gradcheck: worst relative error, ~1e-6 or less
    assert (tmp_path / "digits.npz").is_file()


def test_ci_runs_the_test_command_the_readme_gives():
    commands = [b.strip() for b in _blocks("bash")[:2]]
    assert commands[0] == 'pip install -e ".[data,progress]" && gpunet train'
    test_command = commands[1].split("&&")[-1].strip()
    assert test_command == "python -m pytest -q"
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(test_command)}$", ci, re.MULTILINE), "CI must run the README's test command"
