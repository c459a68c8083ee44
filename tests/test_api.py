"""The public API: cheap import, every name resolves, no import cycles, the README's
Python example runs and registers."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clemalign
from clemalign.sparse_analogy import JointDictionary

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "clemalign"


def test_import_is_standard_library_only():
    """The Snakefile imports clemalign.cases before any job environment exists."""
    code = (
        "import sys, clemalign, clemalign.cases; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'scipy', 'pandas', 'numba', 'matplotlib', 'skimage')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_is_documented():
    for name in clemalign.__all__:
        value = getattr(clemalign, name)
        if name != "__version__":
            assert value.__doc__ and value.__doc__.strip(), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clemalign.nope  # noqa: B018


def _imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """clemalign modules imported anywhere in a module's source (function-level too)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                candidates = [target]
            else:  # "from . import slab": the submodules, not the package itself
                candidates = [f"{target}.{a.name}" for a in node.names]
            found |= {t for t in candidates if t.startswith("clemalign")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clemalign")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return {
        # a submodule's own package is always initialised first: not an edge
        name: {
            t
            for t in _imports(path.read_text(), name, path.name == "__init__.py")
            if t in modules and not name.startswith(t)
        }
        for name, path in modules.items()
        if name != "clemalign"  # __init__ maps names to modules lazily
    }


def test_no_import_cycles():
    graph = _graph()
    assert {"clemalign.training", "clemalign.routes", "clemalign.preprocess"} <= set(graph)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_import_graph_sees_function_level_and_relative_imports():
    source = "from .io import read_image\n\ndef f():\n    from .register import x\n"
    assert _imports(source, "clemalign.training") == {"clemalign.io", "clemalign.register"}
    source = "from . import slab as realistic\nfrom ..transforms import apply\n"
    found = _imports(source, "clemalign.phantom.analogy")
    assert found == {"clemalign.phantom.slab", "clemalign.transforms"}
    graph = _graph()
    assert "clemalign.sparse_analogy" not in graph["clemalign.preprocess"]
    assert "clemalign.preprocess" not in graph["clemalign.sparse_analogy"]


def test_readme_python_example_runs_and_registers(capsys):
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert "error vs ground truth" in capsys.readouterr().out
    assert namespace["scores"]["gt_mean_um"] < 0.1
    assert namespace["result"].info["levels"][-1]["converged"] is not None


def test_joint_dictionary_file_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    d = JointDictionary(
        rng.normal(size=(9, 4)),
        rng.normal(size=(9, 4)),
        np.array([5, 3, 2, 0]),
        ["tem02", "tem05"],
        np.array([3.0, 2.0]),
        True,
        {"patch_size": 3, "lambda": 0.1},
    )
    d.save(tmp_path / "d.npz")
    back = JointDictionary.load(tmp_path / "d.npz")
    assert back.patch_size == 3 and back.training_cases == ["tem02", "tem05"]
    assert back.converged is True and back.params == d.params
    np.testing.assert_array_equal(back.D1, d.D1)
    np.testing.assert_array_equal(back.D2, d.D2)
    np.testing.assert_array_equal(back.usage, d.usage)
