"""Packaging: the wheel ships every CUDA source and the ``gpunet`` command, and the kernel
sources are found both from this checkout and from an installed wheel.

The wheel is built from a copy of the project in a temporary folder, so the build writes
nothing (build/, *.egg-info, kernels/) into the checkout.
"""
from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS = REPO_ROOT / "kernels"


def _repo_kernel_files():
    return sorted(p.name for p in KERNELS.glob("*.cu")) if KERNELS.is_dir() else []


def _can_build_wheels():
    if importlib.util.find_spec("setuptools") is None:
        return False, "setuptools is not installed"
    # bdist_wheel lives in the wheel package, or in setuptools itself from 70.1 on
    if importlib.util.find_spec("wheel") is None and importlib.util.find_spec("setuptools.command.bdist_wheel") is None:
        return False, "neither the wheel package nor a setuptools with bdist_wheel is installed"
    return True, ""


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """The snapshot of the project the wheel is built from."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "gpunet", source / "gpunet", ignore=ignore)
    if KERNELS.is_dir():
        shutil.copytree(KERNELS, source / "kernels", ignore=ignore)
    return source


@pytest.fixture(scope="module")
def wheel_path(source_copy, tmp_path_factory):
    ok, why = _can_build_wheels()
    if not ok:
        pytest.skip(f"cannot build a wheel without build isolation: {why}")
    source = source_copy
    out = tmp_path_factory.mktemp("wheelhouse")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("gpunet-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed_wheel(wheel_path, tmp_path_factory):
    """The wheel unpacked the way an installer lays it out in site-packages."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel_path) as archive:
        archive.extractall(site)
    return site


def _dist_info_file(archive, name):
    matches = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
    assert len(matches) == 1, matches
    return archive.read(matches[0]).decode()


def test_wheel_ships_every_kernel_source(wheel_path, source_copy):
    with zipfile.ZipFile(wheel_path) as archive:
        names = set(archive.namelist())
        shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("gpunet/kernels/") and n.endswith((".cu", ".cuh")))
        # the topics and the shared prelude (common.cuh) every topic is compiled after
        in_repo = sorted(_repo_kernel_files() + [p.name for p in KERNELS.glob("*.cuh")])
        assert shipped == in_repo
        if any(KERNELS.glob("*")):
            assert shipped, "kernels/ has files but the wheel has no gpunet/kernels/*.cu"
        for name in in_repo:
            # against the snapshot: the checkout's kernels may be edited while the test runs
            assert archive.read(f"gpunet/kernels/{name}") == (source_copy / "kernels" / name).read_bytes()


def test_wheel_ships_the_package_modules(wheel_path):
    with zipfile.ZipFile(wheel_path) as archive:
        names = set(archive.namelist())
    for module in sorted((REPO_ROOT / "gpunet").glob("*.py")):
        assert f"gpunet/{module.name}" in names
    assert "gpunet/py.typed" in names, "type checkers read gpunet's hints only with the py.typed marker"


def test_wheel_declares_the_gpunet_command(wheel_path):
    with zipfile.ZipFile(wheel_path) as archive:
        entry_points = configparser.ConfigParser()
        entry_points.read_string(_dist_info_file(archive, "entry_points.txt"))
    assert entry_points["console_scripts"]["gpunet"].strip() == "gpunet.cli:main"


def test_wheel_metadata(wheel_path):
    with zipfile.ZipFile(wheel_path) as archive:
        metadata = Parser().parsestr(_dist_info_file(archive, "METADATA"))
    assert metadata["Name"] == "gpunet"
    assert metadata["Requires-Python"] == ">=3.10"
    requires = metadata.get_all("Requires-Dist") or []
    hard = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in hard] == ["numpy"], hard
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"cuda12", "cuda13", "data", "plot", "dev"} <= extras
    assert any(r.startswith("cupy-cuda12x") and "cuda12" in r for r in requires)
    assert any(r.startswith("cupy-cuda13x") and "cuda13" in r for r in requires)


def test_installed_wheel_finds_kernels_and_command(installed_wheel):
    """Run from the unpacked wheel, away from the checkout: the package data is where
    kernel_dir() looks, and the console-script entry point resolves to the CLI."""
    probe = (
        "import sys, gpunet, gpunet.cuda.sources as cuda\n"
        "from importlib.metadata import entry_points\n"
        "print(gpunet.__file__)\n"
        "print(cuda.kernel_dir())\n"
        "print(','.join(sorted(cuda.kernel_sources())))\n"
        "(command,) = entry_points(group='console_scripts', name='gpunet')\n"
        "import gpunet.cli\n"
        "print(command.load() is gpunet.cli.main)\n"
        "from gpunet.data import load_digits\n"
        "print(load_digits().X_train.shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUNET_BACKEND")}
    env["PYTHONPATH"] = str(installed_wheel)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, cwd=installed_wheel, timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, kernel_folder, topics, command_ok, digits_shape = result.stdout.strip().splitlines()
    assert digits_shape == "(1438, 64)", "the bundled digits are not in the wheel"
    assert Path(module_file).is_relative_to(installed_wheel), "imported gpunet from somewhere else"
    assert Path(kernel_folder).resolve() == (installed_wheel / "gpunet" / "kernels").resolve()
    assert topics.split(",") == [Path(n).stem for n in _repo_kernel_files()]
    assert command_ok == "True"


def test_checkout_finds_its_kernel_sources():
    from gpunet.cuda.sources import kernel_dir, kernel_sources
    if not _repo_kernel_files():
        pytest.skip("kernels/ holds no .cu file yet")
    assert kernel_dir().resolve() == KERNELS.resolve()
    sources = kernel_sources()
    assert sorted(p.name for p in sources.values()) == _repo_kernel_files()
    assert all(p.is_file() and p.read_text(encoding="utf-8").strip() for p in sources.values())


def test_pyproject_maps_the_kernels_folder_into_the_package():
    """The source of the wheel's layout, checked without building (runs everywhere)."""
    try:
        import tomllib
    except ImportError:   # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    assert "gpunet.kernels" in tool["packages"]
    assert tool["package-dir"]["gpunet.kernels"] == "kernels"
    assert "*.cu" in tool["package-data"]["gpunet.kernels"]
    assert "*.cuh" in tool["package-data"]["gpunet.kernels"]   # common.cuh, the shared prelude
    assert config["project"]["scripts"]["gpunet"] == "gpunet.cli:main"
    assert config["project"]["dependencies"] == ["numpy>=1.23"]
