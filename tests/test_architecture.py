"""The package's structure, read from its source: layers that import only downward, no import
cycle (function-level imports included, so none can hide one), no module touching another's
private names, and one registry per concept (activations, metrics, kernel ids).

docs/architecture.md draws the same layers; a module added to the package must be placed in
LAYERS below, which makes its place a decision rather than an accident."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gpunet.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, KERNEL_ACTIVATIONS, OUTPUT_ACTIVATIONS

PACKAGE = Path(__file__).resolve().parents[1] / "gpunet"
KERNELS = PACKAGE.parent / "kernels"

# bottom first; a module may import from its own layer (without a cycle) and the layers below
LAYERS = [
    ("math, formats and plumbing", {"gpunet.softmax", "gpunet.activations", "gpunet.init",
                                    "gpunet.parameters", "gpunet.workspace", "gpunet.concurrency",
                                    "gpunet.metrics", "gpunet.io", "gpunet.scaling", "gpunet.cuda", "gpunet.cuda.layout",
                                    "gpunet.cuda.sources", "gpunet.cuda.launch"}),
    ("backends", {"gpunet.numpy_backend", "gpunet.cupy_backend", "gpunet.backend"}),
    ("checks and training parts", {"gpunet.validation", "gpunet.losses", "gpunet.optim", "gpunet.schedules",
                                   "gpunet.data", "gpunet.tables", "gpunet.callbacks", "gpunet.distributed"}),
    ("the fit loop", {"gpunet.train", "gpunet.step_graph", "gpunet.feeds", "gpunet.checkpoint"}),
    ("the model", {"gpunet.mlp", "gpunet.gradcheck", "gpunet.onnx_export"}),
    ("front ends", {"gpunet", "gpunet.sklearn", "gpunet.diagnostics", "gpunet.recipes", "gpunet.cli",
                    "gpunet.bench", "gpunet.plot"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str):
    """(imported gpunet module, line, at module level?) for every import in ``name``."""
    tree = TREES[name]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")[:len(_package_of(name).split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("gpunet"):
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                yield (candidate if candidate in MODULES else module), node.lineno, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gpunet"):
                    yield alias.name, node.lineno, id(node) in top_level


GRAPH = {name: sorted({m for m, _, _ in _imports(name) if m != name}) for name in MODULES}


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER_OF), "place new modules in LAYERS (and docs/architecture.md)"


def test_imports_go_down_or_sideways_only():
    upward = [f"{name} imports {dep} (line {line})" for name in MODULES for dep, line, _ in _imports(name)
              if dep in LAYER_OF and LAYER_OF[dep] > LAYER_OF[name]]
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle_even_through_function_level_imports():
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in GRAPH[node]:
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_reader_sees_function_level_imports():
    """Guards the test above: backend.py imports cupy_backend inside a function (so that
    ``import gpunet`` never imports CuPy), and the reader counts it."""
    lazy = [(dep, top) for dep, _, top in _imports("gpunet.backend") if dep == "gpunet.cupy_backend"]
    assert lazy == [("gpunet.cupy_backend", False)]


def _module_aliases(name):
    """Local names bound to gpunet modules in ``name`` (``from . import io``, ``import gpunet as gn``)."""
    aliases = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (module := next((m for m, _, _ in _imports(name) if m.endswith("." + alias.name)), None)) \
                        and module in MODULES:
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gpunet"):
                    aliases.add(alias.asname or alias.name.partition(".")[0])
    return aliases


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_touches_another_modules_private_names(name):
    """No ``from .x import _y``, no ``module._y``, and no ``obj._y`` on anything but ``self``
    or ``cls`` (another object's private members are its own business)."""
    offences = []
    aliases = _module_aliases(name)
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gpunet")):
            offences += [f"line {node.lineno}: imports {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Name) and owner.id not in aliases and owner.id in _EXTERNAL_MODULES:
                continue
            offences.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not offences, f"{name} reaches into private names:\n" + "\n".join(offences)


# third-party modules whose private members gpunet uses knowingly (CuPy's GEMM compute type)
_EXTERNAL_MODULES = {"cupy", "linalg"}


# ---- one registry per concept -------------------------------------------------------------------
def test_hidden_and_output_activations_come_from_the_registry():
    assert HIDDEN_ACTIVATIONS == tuple(n for n, c in ACTIVATIONS.items() if c.hidden)
    assert OUTPUT_ACTIVATIONS == tuple(n for n, c in ACTIVATIONS.items() if c.output)
    assert set(HIDDEN_ACTIVATIONS) == {"sigmoid", "tanh", "relu", "leaky_relu", "identity"}


def test_the_cli_offers_the_registry_hidden_activations():
    from gpunet.cli import _build_parser
    parser = _build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]   # argparse keeps its parsers there
    (action,) = [a for a in train._actions if a.dest == "activation"]
    assert tuple(action.choices) == HIDDEN_ACTIVATIONS


def test_the_estimators_accept_the_registry_names_and_aliases():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from gpunet.sklearn import MLPClassifier
    for name in HIDDEN_ACTIVATIONS + ("logistic",):
        assert MLPClassifier(activation=name)._activation_name() in HIDDEN_ACTIVATIONS


def test_generated_device_code_covers_exactly_the_kernel_ids():
    from gpunet.cuda import sources
    text = sources.activation_source()
    assert re.findall(r"struct GnActivation<(\d+)>", text) == [str(i) for i in KERNEL_ACTIVATIONS]
    (ids,) = re.findall(r"#define GN_FOR_EACH_ACTIVATION\(X\) (.*)", text)
    assert ids.split() == [f"X({i})" for i in KERNEL_ACTIVATIONS]
    for cls in KERNEL_ACTIVATIONS.values():
        assert cls.cuda_forward.strip().splitlines()[0].strip() in text
        assert cls.cuda_derivative.strip().splitlines()[0].strip() in text


@pytest.mark.parametrize("source", ["activations.cu", "mse.cu", "common.cuh"])
def test_no_kernel_source_spells_out_activation_ids(source):
    """The kernels switch over GN_FOR_EACH_ACTIVATION; no id or formula is written twice."""
    text = (KERNELS / source).read_text(encoding="utf-8")
    assert not re.search(r"case\s+\d+\s*:", text)
    assert not re.search(r"KIND\s*==\s*\d", text)


def test_every_switch_in_the_kernels_has_a_nan_default():
    for path in sorted(KERNELS.glob("*.cu")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"switch\s*\(", text):
            body = text[match.end():]
            body = body[:body.index("\n    }")]
            default = body[body.index("default:"):]
            assert "gn_fill_nan" in default, f"{path.name}: a switch whose default does not write NaN"


def test_capabilities_not_names_decide_behaviour():
    offences = [f"{name}: line {node.lineno}" for name in MODULES for node in ast.walk(TREES[name])
                if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute)
                and node.left.attr == "name" and any(isinstance(c, ast.Constant) and c.value in ("numpy", "cupy")
                                                     for c in node.comparators)]
    assert not offences, "compare a backend capability, not backend.name: " + ", ".join(offences)


def test_r2_is_computed_in_one_place():
    homes = [name for name in MODULES if "ss_res" in MODULES[name].read_text(encoding="utf-8")]
    assert homes == ["gpunet.metrics"]


def _code_lines(node) -> int:
    """A function's lines, its docstring left out (a numpydoc docstring is long by design)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:] or body
    return node.end_lineno - body[0].lineno + 2      # the def line and the body


def test_fit_phases_are_short():
    """fit in named phases, none over ~60 lines of code."""
    tree = TREES["gpunet.train"]
    lengths = {node.name: _code_lines(node) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert {"fit", "prepare", "run_epoch", "record_epoch", "__call__"} <= set(lengths)
    long = {name: n for name, n in lengths.items() if n > 60}
    assert not long, f"functions over 60 lines in train.py: {long}"
