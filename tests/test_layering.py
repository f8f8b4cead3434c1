"""The package's shape, checked: imports at module top, no cycles, product never depends on the demo.

A function-level import of a project module is how a cycle hides (``a`` imports ``b`` at the top,
``b`` imports ``a`` inside a function). Only the CLI layer (``surgery/cli.py``, ``surgery/commands/``)
imports the library lazily, so that ``surgery --help`` does not load torch; nothing imports it back.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "surgery"
LAZY_ALLOWED = ("surgery/cli.py", "surgery/commands/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names of the project modules an import statement refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "surgery"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if prefix.split(".")[0] != "surgery":
        return []
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def _imports(path: Path, module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level project imports, [(line, name)] of project imports inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = _targets(child, module, is_package)
                if inside:
                    nested.extend((child.lineno, n) for n in names[:1])
                elif not _type_checking_only(child, tree):
                    top.update(names)
            visit(child, inside)

    visit(tree, False)
    return top, nested


def _type_checking_only(node: ast.AST, tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(node is n for n in ast.walk(stmt)):
                return True
    return False


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        top, _ = _imports(path, name)
        graph[name] = {t for t in top if t in modules and t != name}
    return graph


def test_no_project_import_inside_a_function_outside_the_cli_layer():
    offenders = []
    for name, path in _modules().items():
        rel = str(path.relative_to(REPO))
        if rel.startswith(LAZY_ALLOWED):
            continue
        offenders += [f"{rel}:{line} imports {target}" for line, target in _imports(path, name)[1]]
    assert not offenders, "project imports inside functions (move them to the module top):\n" + "\n".join(offenders)


def test_module_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_product_never_imports_the_demo_or_the_cli():
    """Only the CLI layer may import the demo pair package; nothing imports the CLI layer but cli.py."""
    bad = []
    for name, path in _modules().items():
        top, nested = _imports(path, name)
        targets = top | {t for _, t in nested}
        if not name.startswith(("surgery.pair", "surgery.commands", "surgery.cli")):
            bad += [f"{name} imports {t}" for t in targets if t.startswith("surgery.pair")]
        if not name.startswith(("surgery.commands", "surgery.cli")):
            bad += [f"{name} imports {t}" for t in targets if t.startswith(("surgery.commands", "surgery.cli"))]
    assert not bad, "\n".join(sorted(bad))


def test_no_top_level_exporters_package():
    """The ONNX export lives in surgery.export; a top-level `exporters` shadows a package on the index."""
    assert not (REPO / "exporters").exists()
    for name, path in _modules().items():
        assert "import exporters" not in path.read_text() and "from exporters" not in path.read_text(), name


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imports on its own (no hidden order dependence), without the optional extras loaded."""
    names = sorted(_modules())
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = [m for m in ('onnxruntime', 'optimum', 'trl', 'gguf') if m in sys.modules]\n"
        "assert not heavy, f'imported at module level: {heavy}'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _function_lengths(path: Path) -> dict[str, int]:
    """name -> lines from ``def`` to the last line of the body, for every function and method in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name: (node.end_lineno or node.lineno) - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_the_method_reads_in_small_functions():
    """make_patch is orchestration only (<= 40 lines); no function of surgery/hcnr is over 60 lines."""
    long = [
        f"{path.relative_to(REPO)}::{name} has {n} lines"
        for path in sorted((PACKAGE / "hcnr").glob("*.py"))
        for name, n in _function_lengths(path).items()
        if n > 60
    ]
    assert not long, "\n".join(long)
    assert _function_lengths(PACKAGE / "hcnr" / "pipeline.py")["make_patch"] <= 40
