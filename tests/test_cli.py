"""The ``gpunet`` command, end to end: in-process through ``gpunet.cli.main`` and as a real
``python -m gpunet.cli`` process."""
from __future__ import annotations

import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
import gpunet.backend as backend_module
from conftest import GPU_OK, GPU_WHY
from gpunet.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--no-progress", "--epochs", "3", "--hidden", "32"]


@pytest.fixture(autouse=True)
def restore_active_backend(monkeypatch):
    """``gpunet train --backend`` switches the process-wide backend; put it back afterwards."""
    monkeypatch.setattr(backend_module, "_default", backend_module._default)
    monkeypatch.delenv("GPUNET_BACKEND", raising=False)


def run_main(argv, capsys):
    """(exit code, stdout, stderr) of ``gpunet <argv>`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:    # argparse exits on bad options
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(args, env_extra=None, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env_extra or {})}
    if env_extra is None:
        env.pop("GPUNET_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "gpunet.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=timeout)


def reported(out, what):
    """The number printed on the line ``<what>: <number>``."""
    match = re.search(rf"^{re.escape(what)}: ([-0-9.]+)$", out, re.MULTILINE)
    assert match, f"no '{what}:' line in:\n{out}"
    return float(match.group(1))


def assert_real_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200, (width, height)
    assert len(data) > 10_000, "suspiciously small image"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"


# ---- train ------------------------------------------------------------------------------------------
def test_default_train_reaches_97_percent_on_digits(capsys):
    code, out, err = run_main(["train", "--no-progress"], capsys)
    assert code == 0, err
    assert "dataset digits" in out
    assert reported(out, "test accuracy") >= 0.97
    assert reported(out, "train accuracy") >= 0.97


def test_train_saves_a_loadable_model_and_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the learning-curve plot needs matplotlib (not installed)")
    model, png = tmp_path / "digits.npz", tmp_path / "curves.png"
    argv = ["train", "--no-progress", "--epochs", "4", "--hidden", "32", "16", "--activation", "tanh",
            "--lr", "0.05", "--momentum", "0.8", "--nesterov", "--weight-decay", "0", "--dtype", "float64",
            "--seed", "3", "--save", str(model), "--plot", str(png)]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert f"saved model to {model}" in out and f"saved learning curves to {png}" in out
    assert "trained 4 epochs" in out

    net = gn.MLP.load(model)
    assert net.sizes == [64, 32, 16, 10] and net.dtype == np.float64
    assert [a.name for a in net.hidden_activations] == ["tanh", "tanh"]
    from gpunet.data import load_digits
    data = load_digits(seed=3)
    # the saved model is the one whose accuracy was printed
    assert round(net.score(data.X_test, data.y_test), 4) == reported(out, "test accuracy")
    assert round(net.score(data.X_train, data.y_train), 4) == reported(out, "train accuracy")
    assert_real_png(png)


@pytest.mark.parametrize("dataset, metric, n_features, floor", [
    ("spirals", "accuracy", 2, 0.8),
    ("regression", "R^2", 8, 0.5),
    ("mnist1d", "accuracy", 40, 0.2),   # one short epoch: only that it runs and learns something
])
def test_bundled_datasets(tmp_path, capsys, dataset, metric, n_features, floor):
    if dataset == "mnist1d":
        pytest.importorskip("mnist1d")      # an optional extra (e.g. absent on the GPU image)
    pytest.importorskip("matplotlib", reason="the learning-curve plot needs matplotlib (not installed)")
    png = tmp_path / "curves.png"
    epochs = "1" if dataset == "mnist1d" else "5"
    argv = ["train", "--no-progress", "--dataset", dataset, "--epochs", epochs, "--hidden", "64",
            "--plot", str(png)]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert f"dataset {dataset}" in out and f"{n_features} features" in out
    assert reported(out, f"train {metric}") > floor
    assert reported(out, f"test {metric}") > floor
    assert_real_png(png)


def test_train_as_a_process_prints_accuracy_and_saves(tmp_path):
    model = tmp_path / "spirals.npz"
    result = run_process(["train", "--dataset", "spirals", "--epochs", "3", "--hidden", "16", "8",
                          "--batch-size", "64", "--save", str(model)])
    assert result.returncode == 0, result.stderr
    assert 0.0 <= reported(result.stdout, "test accuracy") <= 1.0
    # stderr is no terminal here: no bar, but a line per epoch (progress shows by default)
    lines = result.stderr.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", f"{k}/3"] for k in (1, 2, 3)], result.stderr
    assert all("loss=" in line and "val_accuracy=" in line for line in lines)
    assert gn.MLP.load(model).sizes == [2, 16, 8, 3]


def test_full_batch_option(capsys):
    code, out, err = run_main(["train", "--dataset", "spirals", "--full-batch", *FAST], capsys)
    assert code == 0, err
    assert "trained 3 epochs" in out


# ---- bad options -----------------------------------------------------------------------------------
ARGPARSE_ERRORS = [
    ([], "the following arguments are required"),
    (["fly"], "invalid choice: 'fly'"),
    (["train", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["train", "--hidden", "0"], "argument --hidden: must be a positive integer"),
    (["train", "--hidden", "wide"], "argument --hidden"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["train", "--lr", "fast"], "argument --lr: invalid float value"),
    (["train", "--seed", "-5"], "argument --seed: must be a non-negative integer"),
    (["train", "--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    (["train", "--activation", "softmax"], "argument --activation: invalid choice"),
    (["train", "--dtype", "float16"], "argument --dtype: invalid choice"),
    (["train", "--backend", "tpu"], "argument --backend: invalid choice"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, message", ARGPARSE_ERRORS, ids=[" ".join(a) or "nothing" for a, _ in ARGPARSE_ERRORS])
def test_malformed_options_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert message in err


VALUE_ERRORS = [
    (["--epochs", "-1"], "epochs must be >= 0"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "nan"], "lr must be finite"),
    (["--lr", "inf"], "lr must be finite"),
    (["--momentum", "1"], "momentum must be < 1"),
    (["--momentum", "0", "--nesterov"], "nesterov=True needs momentum > 0"),
    (["--weight-decay", "-0.1"], "weight_decay must be >= 0"),
    (["--clip-norm", "0"], "clip_norm must be > 0"),
    (["--save", "/nonexistent-gpunet-dir/model.npz"], "--save /nonexistent-gpunet-dir/model.npz: the folder"),
    (["--plot", "/nonexistent-gpunet-dir/curves.png"], "--plot /nonexistent-gpunet-dir/curves.png: the folder"),
]


@pytest.mark.parametrize("extra, message", VALUE_ERRORS, ids=[" ".join(e) for e, _ in VALUE_ERRORS])
def test_bad_values_exit_2_with_a_message_before_training(capsys, extra, message):
    code, out, err = run_main(["train", "--dataset", "spirals", *FAST, *extra], capsys)
    assert code == 2
    assert err.startswith("gpunet train: error: ") and message in err
    assert "trained" not in out


def test_bad_option_as_a_process_gives_no_traceback():
    result = run_process(["train", "--no-progress", "--dataset", "spirals", "--lr", "-1"])
    assert result.returncode == 2
    assert "lr must be > 0" in result.stderr and "Traceback" not in result.stderr
    result = run_process(["train", "--hidden", "-3"])
    assert result.returncode == 2
    assert "must be a positive integer" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(GPU_OK, reason="a GPU is usable here, so --backend cupy works")
def test_cupy_backend_without_gpu_exits_2_with_the_reason(capsys):
    code, out, err = run_main(["train", "--backend", "cupy", "--dataset", "spirals", *FAST], capsys)
    assert code == 2
    assert "no GPU is usable" in err and GPU_WHY in err


@pytest.mark.skipif(GPU_OK, reason="a GPU is usable here, so GPUNET_BACKEND=cupy works")
def test_train_honours_gpunet_backend(capsys, monkeypatch):
    monkeypatch.setattr(backend_module, "_default", None)
    monkeypatch.setenv("GPUNET_BACKEND", "cupy")
    code, out, err = run_main(["train", "--dataset", "spirals", *FAST], capsys)
    assert code == 2 and "GPUNET_BACKEND='cupy'" in err
    # an explicit --backend wins over the variable
    code, out, err = run_main(["train", "--dataset", "spirals", "--backend", "numpy", *FAST], capsys)
    assert code == 0, err
    assert "backend numpy" in out


# ---- info --------------------------------------------------------------------------------------------
def test_info_prints_versions_backend_and_gpu_usability(capsys):
    code, out, err = run_main(["info"], capsys)
    assert code == 0, err
    assert re.search(rf"^gpunet\s+{re.escape(gn.__version__)}$", out, re.MULTILINE)
    assert re.search(rf"^python\s+{re.escape(platform.python_version())}", out, re.MULTILINE)
    assert re.search(rf"^numpy\s+{re.escape(np.__version__)}$", out, re.MULTILINE)
    assert re.search(r"^cupy\s+\S", out, re.MULTILINE)
    gpu_line = re.search(r"^gpu\s+(usable|not usable): (.+)$", out, re.MULTILINE)
    assert gpu_line and gpu_line.group(1) == ("usable" if GPU_OK else "not usable")
    assert gpu_line.group(2) == GPU_WHY
    assert re.search(rf"^backend\s+{gn.get_backend().name}\b", out, re.MULTILINE)


def test_info_as_a_process_reports_the_environment_backend():
    result = run_process(["info"], env_extra={"GPUNET_BACKEND": "numpy"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^backend\s+numpy\b", result.stdout, re.MULTILINE)
    assert "gpu" in result.stdout


# ---- discoverability: --version and the defaults in --help ---------------------------------------------
def help_of(argv, capsys) -> str:
    """``gpunet <argv> --help``'s text."""
    code, out, err = run_main([*argv, "--help"], capsys)
    assert code == 0, err
    return out


def option_help(help_text, option) -> str:
    """What the help says about ``option``, its line wrapping undone: the entry that starts
    with it (argparse indents entries by two spaces, their wrapped lines further)."""
    lines = help_text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^  {re.escape(option)}\b", line)]
    assert starts, f"no entry for {option} in:\n{help_text}"
    entry = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not line.startswith("   "):        # the next entry, a blank line or a section title
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_version_prints_the_package_version(capsys):
    code, out, err = run_main(["--version"], capsys)
    assert code == 0, err
    assert out == f"gpunet {gn.__version__}\n"


def test_version_as_a_process():
    result = run_process(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gpunet {gn.__version__}"


def test_train_help_shows_the_defaults(capsys):
    text = help_of(["train"], capsys)
    assert "(default: 40)" in option_help(text, "--epochs")
    assert "(default: 32)" in option_help(text, "--batch-size")
    assert "(default: 0.9)" in option_help(text, "--momentum")
    assert "(default: 0.02)" in option_help(text, "--lr")
    assert "(default: 256)" in option_help(text, "--hidden")        # a list's items, not "[256]"
    assert "(default: digits)" in option_help(text, "--dataset")
    assert "(default: 0.2)" in option_help(text, "--test-size")
    assert "default" not in option_help(text, "--nesterov")         # flags are off unless given
    assert "(default: None)" not in " ".join(text.split())         # None means "not given": said in words


@pytest.mark.parametrize("command, option, default", [
    ("predict", "-o", "(default: CSV on stdout)"),
    ("predict", "--backend", "(default: GPUNET_BACKEND if set, else auto)"),
    ("evaluate", "--target", "(default: the one the model was trained on)"),
    ("evaluate", "--backend", "(default: GPUNET_BACKEND if set, else auto)"),
    ("recipe", "--seeds", "(default: 0)"),
    ("bench", "--backend", "(default: all)"),
])
def test_predict_evaluate_recipe_and_bench_help_show_defaults(capsys, command, option, default):
    assert default in option_help(help_of([command], capsys), option)


def test_every_option_with_a_default_shows_it(capsys):
    """Whatever option is added later: a value other than None appears in its help."""
    import argparse

    from gpunet.cli import _build_parser

    (commands,) = [action for action in _build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    for command, parser in commands.choices.items():
        text = help_of([command], capsys)
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
                continue
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            said = option_help(text, action.option_strings[0])
            assert f"(default: {shown})" in said or "default" in said, (command, action.option_strings, said)
