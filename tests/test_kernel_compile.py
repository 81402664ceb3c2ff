"""Every CUDA source in kernels/ compiles, without a GPU: with ``nvcc -ptx`` when nvcc is on
PATH and with NVRTC (``cupy.cuda.nvrtc``, the compiler CuPy uses at run time) when CuPy and
libnvrtc load. Each compiler is skipped with its reason when absent. Plus the rules NVRTC
imposes on the sources (no headers, no INFINITY) and the naming the launchers rely on."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpunet.cuda import launch, layout, sources

SOURCES = sources.kernel_sources()
ARCHS = ("sm_80", "sm_90")
NVCC = sources.nvcc_path()
NVRTC = sources.nvrtc_version()


def test_sources_are_found_in_the_checkout():
    assert set(sources.KERNEL_TOPICS) <= set(SOURCES), f"missing topics in {sources.kernel_dir()}"
    assert all(path.suffix == ".cu" and path.parent == sources.kernel_dir() for path in SOURCES.values())


RULE_FILES = {**{t: p for t, p in SOURCES.items()}, "prelude": sources.kernel_dir() / sources.PRELUDE}


@pytest.mark.parametrize("topic", sorted(RULE_FILES))
def test_source_needs_no_toolkit_header(topic):
    text = RULE_FILES[topic].read_text(encoding="utf-8")
    assert "#include" not in text, "NVRTC has no toolkit headers: kernels must not #include anything"
    assert not re.search(r"\bINFINITY\b", text), "INFINITY needs math headers; build -inf from its bit pattern"
    # reductions must be deterministic: no atomics, but for the one ticket counter that picks
    # the block which sums the partials in a fixed order (common.cuh: gn_last_block)
    atomics = re.findall(r"\batomic[A-Z]\w*\([^;]*;", text)
    assert atomics == (["atomicAdd(arrivals, 1u) == blocks - 1;"] if topic == "prelude" else []), atomics


@pytest.mark.parametrize("topic", sorted(SOURCES))
def test_each_topic_is_compiled_after_the_shared_prelude(topic):
    """What RawModule, NVRTC and nvcc all compile: common.cuh, the activations generated from
    gpunet/activations.py, then the topic at its own line 1."""
    full = sources.module_source(SOURCES[topic])
    prelude = (sources.kernel_dir() / sources.PRELUDE).read_text(encoding="utf-8")
    assert full.startswith(prelude)
    assert full.index(sources.activation_source()) > len(prelude) - 1
    assert full.endswith(f'#line 1 "{topic}.cu"\n' + SOURCES[topic].read_text(encoding="utf-8"))


@pytest.mark.parametrize("topic", sorted(SOURCES))
def test_every_kernel_has_float_and_double_instances(topic):
    text = SOURCES[topic].read_text(encoding="utf-8")
    names = sources.kernel_names(text)
    assert names, f"no extern \"C\" __global__ kernel in {topic}.cu"
    # a kernel whose operands are not floats (the batch gather's 32-bit words, a step counter)
    # has one instance, named by the type it works on
    typed = [n for n in names if not n.endswith(("_u32", "_i64"))]
    bases = {re.sub(r"_f(32|64)$", "", n) for n in typed}
    for base in bases:
        assert f"{base}_f32" in names and f"{base}_f64" in names, f"{base} lacks a float or double instance"
    assert len(typed) == 2 * len(bases), f"unexpected entry points in {topic}.cu: {names}"


@pytest.mark.parametrize("topic", sorted(SOURCES))
def test_source_opens_with_a_comment(topic):
    first = SOURCES[topic].read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert first.startswith("//"), "each topic file opens with a comment saying what it holds"


def test_launchers_name_existing_kernels():
    """Every ``get_kernel(topic, f"<name>_{...}")`` in gpunet/cuda/launch.py names a kernel of that topic."""
    text = Path(launch.__file__).read_text(encoding="utf-8")
    calls = re.findall(r'get_kernel\("(\w+)", f"(\w+)_\{', text)
    assert calls
    for topic, base in calls:
        names = sources.kernel_names(SOURCES[topic].read_text(encoding="utf-8"))
        assert f"{base}_f32" in names and f"{base}_f64" in names, f"{topic}.cu has no {base}_f32/_f64"
    for topic, name in re.findall(r'get_kernel\("(\w+)", "(\w+)"\)', text):     # untyped names, in full
        assert name in sources.kernel_names(SOURCES[topic].read_text(encoding="utf-8")), f"{topic}.cu has no {name}"


@pytest.fixture(scope="module")
def nvcc_results():
    """Every source for every arch in one go (nvcc runs side by side), shared by the arch tests."""
    return sources.compile_sources("nvcc", archs=ARCHS)


@pytest.fixture(scope="module")
def nvrtc_results():
    return sources.compile_sources("nvrtc", archs=ARCHS)


def _assert_compiled(results, arch):
    mine = [r for r in results if r[2] == arch]
    assert len(mine) == len(SOURCES)
    failures = {topic: err for topic, _, _, err in mine if err}
    assert not failures, "\n\n".join(f"kernels/{t}.cu for {arch}:\n{e}" for t, e in failures.items())


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_every_source(nvcc_results, arch):
    _assert_compiled(nvcc_results, arch)


@pytest.mark.skipif(NVRTC is None, reason="NVRTC is not available (CuPy not importable or libnvrtc not found)")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_source(nvrtc_results, arch):
    _assert_compiled(nvrtc_results, arch)


ENTRY_POINTS = [(topic, name) for topic, path in sorted(SOURCES.items())
                for name in sources.kernel_names(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("topic, name", ENTRY_POINTS, ids=[n for _, n in ENTRY_POINTS])
def test_a_one_kernel_module_keeps_its_entry_point_and_nothing_else(topic, name):
    """Each kernel is compiled on its own (only the template instances a process launches):
    its module text declares that entry point alone, and everything else of the topic stays."""
    text = sources.module_source(SOURCES[topic], kernels={name})
    assert sources.kernel_names(text) == [name]
    whole = sources.module_source(SOURCES[topic])
    assert len(text) < len(whole) or len(sources.kernel_names(whole)) == 1


@pytest.mark.skipif(NVRTC is None and NVCC is None, reason="neither NVRTC nor nvcc is available")
def test_every_one_kernel_module_compiles():
    from concurrent.futures import ThreadPoolExecutor

    def build(entry):
        topic, name = entry
        try:
            return name, "" if sources.compile_ptx(topic, kernels={name}) else "no PTX"
        except RuntimeError as exc:
            return name, str(exc)

    with ThreadPoolExecutor(4) as pool:
        failures = {name: err for name, err in pool.map(build, ENTRY_POINTS) if err}
    assert not failures, "\n\n".join(f"{name}:\n{err}" for name, err in failures.items())


# the topics whose kernels claim bit-for-bit parity with their NumPy twin (the optimizer
# updates); the others are compared within a dtype-scaled tolerance, which a flushed subnormal
# (below 1.2e-38 in float32) stays inside
BITWISE_TOPICS = ("optim",)


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_bitwise_topics_keep_subnormals_under_cupys_flush_option(compiler):
    """CuPy appends -ftz=true to every RawModule; the bitwise topics write their float
    arithmetic as PTX without .ftz, so they keep subnormals as NumPy does."""
    if (compiler == "nvcc" and NVCC is None) or (compiler == "nvrtc" and NVRTC is None):
        pytest.skip(f"{compiler} is not available")
    for topic in BITWISE_TOPICS:
        ptx = sources.compile_ptx(topic, compiler)
        flushed = sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.ftz(?:\.[a-z0-9]+)*", ptx)))
        assert not flushed, f"kernels/{topic}.cu flushes subnormals under CuPy's options: {flushed}"
    # the check can fail: the element-wise topic, compiled alike, does flush
    assert ".ftz." in sources.compile_ptx("activations", compiler)


def test_the_installed_cupy_appends_the_options_we_compile_with():
    pytest.importorskip("cupy", reason="CuPy is not installed")
    import inspect

    from cupy.cuda import compiler
    text = inspect.getsource(compiler)
    for option in sources.CUPY_APPENDED_OPTIONS:
        assert f"'{option}'" in text, f"CuPy no longer adds {option}: update CUPY_APPENDED_OPTIONS"


def test_compile_reports_a_broken_source(tmp_path, monkeypatch):
    """The check would catch a broken kernel (so a green run means something)."""
    if NVRTC is None and NVCC is None:
        pytest.skip("neither NVRTC nor nvcc is available")
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void broken_f32(float* x) { x[0] = undefined_name; }\n')
    monkeypatch.setattr(sources, "kernel_sources", lambda: {"broken": broken})
    results = sources.compile_sources("auto", archs=("sm_90",))
    assert len(results) == 1 and results[0][3] and "undefined_name" in results[0][3]


def test_compile_without_any_compiler_says_so(monkeypatch):
    monkeypatch.setattr(sources, "nvrtc_version", lambda: None)
    monkeypatch.setattr(sources, "nvcc_path", lambda: None)
    with pytest.raises(RuntimeError, match="neither NVRTC"):
        sources.compile_sources("auto")


def test_row_layouts(monkeypatch):
    """Which row kernel, block and kept copy each width gets (pure Python, no GPU)."""
    monkeypatch.delenv("GPUNET_LONG_ROWS", raising=False)
    smem = 227 * 1024 - 1024                      # an H100's opt-in shared memory per block
    assert layout.row_layout(10, 3, 4, smem) == layout.RowLayout("warp", 256, 2, 1, 0)
    assert layout.row_layout(10, 100, 8, smem).mode == 4
    assert layout.row_layout(10, 1024, 4, smem).mode == 32
    wide = layout.row_layout(8192, 32768, 4, smem)     # the benchmark case: kept in registers by default
    assert (wide.kernel, wide.block, wide.mode, wide.shared_mem) == ("block_regs", 1024, 32, 0)
    wide = layout.row_layout(8192, 32768, 4, smem, variant="shared")     # or in shared memory
    assert (wide.kernel, wide.block, wide.mode, wide.shared_mem) == ("block", 1024, 1, 131072)
    assert wide.grid == layout.MAX_GRID_ROWS                           # no device here: the fixed cap
    assert layout.row_layout(4, 32768, 8, smem).mode == 0   # 32 doubles a thread, 256 KiB: read twice
    assert layout.row_layout(4, 2000, 4, smem, variant="shared").block == 256
    for cols in (1, 31, 32, 33, 1024, 1025, 4097, 16385, 40000):
        rows_layout = layout.row_layout(3, cols, 4, smem)
        if rows_layout.kernel == "warp":
            assert 32 * rows_layout.mode >= cols
        assert rows_layout.block % 32 == 0 and rows_layout.block <= 1024


@pytest.mark.parametrize("cols, itemsize, slots", [(1025, 4, 2), (4097, 8, 8), (16384, 8, 16), (32768, 4, 32)])
def test_register_rows_take_the_fewest_slots(cols, itemsize, slots):
    rows_layout = layout.row_layout(37, cols, itemsize, variant="registers")
    assert rows_layout == layout.RowLayout("block_regs", 1024, min(layout.MAX_GRID_ROWS, 37), slots, 0)


def test_register_rows_fall_back_to_shared_memory_where_they_do_not_fit(monkeypatch):
    # 32 doubles per thread would spill: float64 rows past 16384 columns, and any row past
    # 32768, take the shared-memory kernel; rows up to 1024 stay with the warp kernel
    assert layout.row_layout(37, 16385, 8, max_smem=1 << 20, variant="registers").kernel == "block"
    assert layout.row_layout(37, 32769, 4, max_smem=1 << 20, variant="registers").kernel == "block"
    assert layout.row_layout(37, 1024, 4, variant="registers").kernel == "warp"
    monkeypatch.delenv("GPUNET_LONG_ROWS", raising=False)
    assert layout.row_layout(37, 5000, 4, max_smem=1 << 20).kernel == "block_regs"      # the default
    monkeypatch.setenv("GPUNET_LONG_ROWS", "shared")
    assert layout.row_layout(37, 5000, 4, max_smem=1 << 20).kernel == "block"
    monkeypatch.setenv("GPUNET_LONG_ROWS", "texture")
    with pytest.raises(ValueError, match="GPUNET_LONG_ROWS must be one of shared, registers"):
        layout.row_layout(37, 5000, 4, max_smem=1 << 20)


def test_capped_grids_are_whole_waves_of_the_device(monkeypatch):
    monkeypatch.setattr(layout, "sm_count", lambda: 132)               # an H100 SXM
    assert layout.whole_waves(4096, 256) == 3 * 132 * 8                # three full waves of 8 blocks per SM
    assert layout.whole_waves(4096, 1024) == 15 * 132 * 2
    assert layout.whole_waves(3, 256) == 3                             # under one wave: as asked
    assert layout.grid_1d(10**9) == 3168 and layout.grid_1d(1000) == 4
    assert layout.row_layout(10**6, 3000, 4, max_smem=1 << 20).grid == 15 * 264
    monkeypatch.setattr(layout, "sm_count", lambda: None)              # no device: the fixed cap
    assert layout.grid_1d(10**9) == layout.MAX_GRID_1D


def test_long_rows_context_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("GPUNET_LONG_ROWS", "registers")
    with layout.long_rows("shared"):
        assert layout.long_row_variant() == "shared"
        with layout.long_rows("registers"):
            assert layout.row_layout(5, 3000, 4, max_smem=1 << 20).kernel == "block_regs"
        assert layout.row_layout(5, 3000, 4, max_smem=1 << 20).kernel == "block"
    assert layout.long_row_variant() == "registers"
    with pytest.raises(ValueError, match="variant must be one of shared, registers"):
        with layout.long_rows("texture"):
            pass


def test_reduction_layouts_depend_on_the_shape_only():
    assert layout.reduction_grid(1) == 1
    assert layout.reduction_grid(10**9) == layout.MAX_REDUCTION_BLOCKS
    for rows, cols in [(1, 1), (7, 3), (4096, 4096), (70001, 3), (256, 200), (2, 10**6)]:
        chunks, per_chunk = layout.column_sums_chunks(rows, cols)
        assert 1 <= chunks <= 65535 and chunks * per_chunk >= rows and (chunks - 1) * per_chunk < rows
