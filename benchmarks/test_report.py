"""The report of ``gpunet bench`` on a small hand-made result file (no timing here): the
ratios and fractions it derives, the markdown it prints and the plot it draws. It lives with
the suite so the CI smoke run (``pytest benchmarks --benchmark-disable``) keeps it working."""
from __future__ import annotations

import argparse

import pytest

from gpunet import bench


def _bench(case, impl, backend, device, median, size="small", shape="8x8", flops=0, nbytes=0,
           bound="memory", fastest=None, **extra):
    info = dict(case=case, impl=impl, backend=backend, device=device, size=size, shape=shape,
                dtype="float32", flops=flops, bytes=nbytes, bound=bound, work=flops or nbytes, **extra)
    stats = {"median": median, "min": fastest or median, "iqr": 0.0, "rounds": 5}
    return {"group": case, "name": f"test_{case}[{impl}-{backend}]", "extra_info": info, "stats": stats}


def _results():
    gflop, gb = 1e9, 1e9
    benches = [
        _bench("ceiling", "matmul", "numpy", "cpu", 1.0, size="ceiling", flops=100 * gflop, bound="compute",
               fastest=0.5, moment="start"),
        _bench("ceiling", "matmul", "numpy", "cpu", 1.0, size="ceiling", flops=100 * gflop, bound="compute",
               fastest=0.8, moment="end"),
        _bench("ceiling", "copy", "numpy", "cpu", 1.0, size="ceiling", nbytes=10 * gb),
        _bench("ceiling", "matmul", "cupy", "gpu", 1.0, size="ceiling", flops=10000 * gflop, bound="compute"),
        _bench("ceiling", "copy", "cupy", "gpu", 1.0, size="ceiling", nbytes=1000 * gb),
        _bench("softmax_xent", "fused", "numpy", "cpu", 1.0, nbytes=5 * gb),
        _bench("softmax_xent", "unfused", "numpy", "cpu", 2.0, nbytes=5 * gb),
        _bench("softmax_xent", "fused", "cupy", "gpu", 0.01, nbytes=5 * gb, host_time=0.002,
               paired={"unfused": {"median": 0.04, "rounds": 5, "ratio": 0.25}}),
        _bench("mlp_train_step", "gpunet", "numpy", "cpu", 1.0, flops=50 * gflop, bound="compute",
               paired={"torch-eager": {"median": 2.0, "rounds": 5, "ratio": 0.5}}),
        _bench("mlp_step_gemms", "gpunet", "numpy", "cpu", 1.0, flops=50 * gflop, bound="compute",
               paired={"gemms": {"median": 0.8, "rounds": 5, "ratio": 1.25}}),
        _bench("mlp_train_step", "torch-eager", "torch", "cpu", 2.0, flops=50 * gflop, bound="compute"),
        _bench("mlp_train_step", "torch-compile", "torch", "cpu", 4.0, flops=50 * gflop, bound="compute"),
        _bench("sklearn_fit", "gpunet", "numpy", "cpu", 0.3, flops=gflop, bound="compute", dataset="digits",
               solver="adam", score=0.97, peer_score=0.975, score_name="accuracy",
               paired={"scikit-learn": {"median": 0.6, "rounds": 5, "ratio": 0.5}}),
        _bench("sklearn_fit", "gpunet", "numpy", "cpu", 0.1, flops=gflop, bound="compute", dataset="diabetes",
               solver="lbfgs", score=0.5, peer_score=0.49, score_name="R^2",
               paired={"scikit-learn": {"median": 0.125, "rounds": 5, "ratio": 0.8}}),
        _bench("fit_epoch", "gpunet", "cupy", "gpu", 0.002, flops=gflop, bound="compute",
               paired={"eager": {"median": 0.006, "rounds": 5, "ratio": 0.25}}),
    ]
    machine = {"gpunet": {"date": "2030-01-02T03:04:05", "cpu_model": "Test CPU", "cpu_count": 2,
                          "gpu_usable": True, "gpu": "Test GPU", "python": "3", "numpy": "2"}}
    return {"benchmarks": benches, "machine_info": machine}


def test_rates_ratios_and_ceilings():
    rows = {(r["case"], r["impl"], r["backend"]): r for r in bench._ratios(bench.load_rows(_results()))}
    step = rows[("mlp_train_step", "gpunet", "numpy")]
    assert rows[("mlp_step_gemms", "gpunet", "numpy")]["outside_gemms"] == pytest.approx(0.2)   # GEMMs: 1/1.25
    # the ceiling is the fastest round: 100 GFLOP in 0.5 s
    assert step["rate"] == pytest.approx(50e9) and step["fraction"] == pytest.approx(0.25)
    assert step["floor"] == pytest.approx(0.25)
    assert step["vs_torch-eager"] == pytest.approx(0.5)          # the paired ratio wins
    assert step["vs_torch-compile"] == pytest.approx(0.25)       # else the ratio of medians
    fused = rows[("softmax_xent", "fused", "numpy")]
    assert fused["fused_speedup"] == pytest.approx(2.0) and fused["fraction"] == pytest.approx(0.5)
    gpu = rows[("softmax_xent", "fused", "cupy")]
    assert gpu["gpu_speedup"] == pytest.approx(100.0) and gpu["fused_speedup"] == pytest.approx(4.0)


def test_markdown_and_plot(tmp_path):
    data = _results()
    rows = bench.load_rows(data)
    text = bench.render_markdown(rows, data["machine_info"], title="test")
    assert "### mlp_train_step" in text and "### softmax_xent" in text and "### ceilings" in text
    assert "gpunet/PyTorch eager" in text and "gpunet/torch.compile" in text
    assert "CuPy/NumPy speedup" in text and "100.00" in text
    assert "Test GPU" in text and "| 2 ms |" in text   # the GPU row's host time to queue
    assert "| 20% (GEMMs alone 800 ms) |" in text and "20% of it outside the GEMMs" in text
    assert "| 0.25 (eager 6 ms) |" in text          # a graphed epoch over its eager steps
    # the scikit-learn drop-in: scores side by side, the paired time ratio, the summary's range
    assert "| small | digits, adam |" in text and "| 0.9700 / 0.9750 (accuracy) | 0.50 (vs 600 ms) |" in text
    assert ("gpunet.sklearn on numpy: fit() takes 0.50-0.80x (median 0.65x) the time of sklearn.neural_network "
            "over 2 dataset and solver pairs; the largest score shortfall is +0.0050 (digits, adam)") in text
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    bench.render_plot(rows, png, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_result_names():
    assert bench.result_stem(_results()["machine_info"]) == "test-gpu_2030-01-02"
    cpu = {"gpunet": {"cpu_model": "AMD EPYC 9B14", "cpu_count": 2, "date": "2030-01-02T00:00:00"}}
    assert bench.result_stem(cpu, quick=True) == "amd-epyc-9b14-2cpu_2030-01-02_quick"


def test_missing_suite_says_so(tmp_path, capsys):
    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(["--suite", str(tmp_path)])
    assert bench.run(args) == 2
    assert "benchmark suite (benchmarks/) was not found" in capsys.readouterr().err
