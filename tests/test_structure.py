"""The package's shape: imports form a DAG, only `_dispatch` asks which library an array
comes from, and `import bceloss` imports no framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bceloss

PACKAGE = Path(bceloss.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules) -> set[str]:
    """The package's modules that `path` imports, at the top or inside a function:
    `from bceloss import _x` names the module `_x` (not the package), `from bceloss._x import
    f` names `_x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: the package imports absolutely"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph):
    """A cycle of `graph` as a list of modules, or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_inside_the_package_form_a_dag():
    graph = _graph()
    assert "bceloss._call" in graph
    assert "bceloss._dispatch" in graph["bceloss._validation"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_only_dispatch_asks_which_library_an_array_comes_from():
    askers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if "array_api_compat.is_" in text.replace("array_api_compat.is_array_api_obj", ""):
            askers.append(_module_name(path))
    assert askers == [], askers


def test_import_bceloss_imports_no_framework():
    code = (
        "import sys, bceloss, bceloss.compat.paddle, bceloss.compat.mindspore; "
        "print(sorted(m for m in ('torch', 'jax', 'dask', 'paddle', 'mindspore', 'numba', "
        "'cupy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
