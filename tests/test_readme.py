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


def test_the_training_options_and_backend_examples_run(monkeypatch):
    """The README's other examples, on small data: every call and signature in them is real."""
    import numpy as np

    import gpunet as gn
    import gpunet.backend as backend_module
    monkeypatch.setattr(backend_module, "_default", backend_module._default)   # set_backend("auto") in it
    rng = np.random.default_rng(0)
    X, X_val = rng.normal(size=(64, 5)), rng.normal(size=(16, 5))
    y, y_val = np.arange(64) % 3, np.arange(16) % 3
    blocks = _blocks("python")
    options = next(b for b in blocks if b.startswith("from gpunet.optim import"))
    backends = next(b for b in blocks if b.startswith('gn.set_backend("auto")'))
    net = gn.MLP([5, 8, 3], seed=0)
    scope = {"net": net, "X": X, "y": y, "X_val": X_val, "y_val": y_val, "w": rng.uniform(0.5, 2, 64),
             "gn": gn, "array": np.ones(3)}
    exec(compile(options.replace("epochs=30", "epochs=2"), "README.md", "exec"), scope)
    exec(compile(backends, "README.md", "exec"), scope)
    assert net.predict(X).shape == (64,)


def test_the_architecture_docs_example_runs():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    scope = {}
    exec(compile(example, "docs/architecture.md", "exec"), scope)
    assert scope["probs"].shape == (256, 3) and float(scope["loss"]) > 0


def test_the_your_own_data_example_runs(tmp_path, monkeypatch):
    """The README's DataFrame, memory-map and stream lines, on small stand-ins for its data."""
    pd = pytest.importorskip("pandas", reason="the example trains on a pandas DataFrame")
    import numpy as np

    import gpunet as gn
    example = next(b for b in _blocks("python") if b.startswith("net = gn.MLP([4, 32, 3], standardize=True)"))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    labels = np.array(["setosa", "versicolor", "virginica"])[np.arange(90) % 3]
    monkeypatch.chdir(tmp_path)
    np.save("big.npy", X)
    scope = {"gn": gn, "np": np, "frame": pd.DataFrame(X, columns=["a", "b", "c", "d"]),
             "frame_labels": labels, "big_labels": labels,
             "read_batches": lambda: ((X[s:s + 30], labels[s:s + 30]) for s in range(0, 90, 30))}
    exec(compile(example, "README.md", "exec"), scope)
    net = scope["net"]
    assert net.feature_names == ["a", "b", "c", "d"] and net.classes.tolist() == sorted(set(labels))
    assert set(net.predict(scope["frame"])) <= set(labels)


def test_every_schedule_is_shown_with_its_required_arguments_named():
    """Each schedule of gpunet.schedules appears in the README's code, and every call of one
    passes the arguments it requires by name (``StepDecay(step_size=10)``, not a bare 10)."""
    import ast
    import inspect

    import gpunet.schedules as schedules
    classes = {name: getattr(schedules, name) for name in schedules.__all__
               if inspect.isclass(getattr(schedules, name)) and getattr(schedules, name) is not schedules.Schedule}
    calls = [node for block in _blocks("python") for node in ast.walk(ast.parse(block))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes]
    assert {call.func.id for call in calls} == set(classes), "a schedule the README does not show"
    for call in calls:
        required = [p.name for p in inspect.signature(classes[call.func.id]).parameters.values()
                    if p.default is inspect.Parameter.empty]
        named = {keyword.arg for keyword in call.keywords}
        assert not call.args and set(required) <= named, \
            f"README: {ast.unparse(call)} should name {', '.join(required)}"


def test_the_callbacks_and_resume_example_runs(tmp_path, monkeypatch):
    import numpy as np

    import gpunet as gn
    example = next(b for b in _blocks("python") if b.startswith("from gpunet.callbacks import"))
    rng = np.random.default_rng(0)
    X, X_val = rng.normal(size=(64, 5)), rng.normal(size=(16, 5))
    y, y_val = np.arange(64) % 3, np.arange(16) % 3
    monkeypatch.chdir(tmp_path)
    net = gn.MLP([5, 8, 3], seed=0)
    scope = {"net": net, "X": X, "y": y, "X_val": X_val, "y_val": y_val, "gn": gn}
    exec(compile(example.replace("epochs=30", "epochs=12").replace("ckpt-10", "ckpt-5"), "README.md", "exec"),
         scope)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-10.npz", "ckpt-5.npz"]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 13
