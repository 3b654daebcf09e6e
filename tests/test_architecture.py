"""The package's structure stays as designed: no import cycles, no hidden imports, one MLflow schema.

- No import cycles among the package's modules (imports at module level, ``if TYPE_CHECKING:`` blocks aside;
  importing ``a.b.c`` from outside package ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``).
- No function-level imports of the package's own modules outside ``cli.py`` (which keeps ``--help`` fast):
  a cycle cannot hide behind one.
- No module but ``schema.py`` spells the project's own MLflow tag names.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sota_ablate"
ALLOWED_LAZY = {"sota_ablate.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, current: str) -> list[str]:
    """The package modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "sota_ablate"]
    if node.level:  # relative import
        base = current.split(".")[: -node.level] if MODULES[current].name != "__init__.py" else current.split(".")
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if prefix.split(".")[0] != "sota_ablate":
        return []
    submodules = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in MODULES]
    if len(submodules) == len(node.names) and (current == prefix or current.startswith(prefix + ".")):
        return submodules  # ``from package import module`` inside the package: its __init__ is already running
    return [prefix, *submodules]


def imports(name: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, [(line, module)] imported inside functions) of module ``name``."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top: set[str] = set()
    lazy: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                targets = _targets(child, name)
                if in_function:
                    lazy.extend((child.lineno, t) for t in targets)
                else:
                    top.update(targets)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return top, lazy


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name in MODULES:
        top, _ = imports(name)
        deps = set()
        for target in top:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                if ancestor not in MODULES or ancestor == name:
                    continue
                if i < len(parts) and (name == ancestor or name.startswith(ancestor + ".")):
                    continue  # a package's own modules do not re-run its __init__
                deps.add(ancestor)
        edges[name] = deps
    return edges


def test_no_import_cycles() -> None:
    sorter = graphlib.TopologicalSorter(graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_no_function_level_imports_of_the_package() -> None:
    found = []
    for name in MODULES:
        if name in ALLOWED_LAZY:
            continue
        found += [f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {t}" for line, t in imports(name)[1]]
    assert not found, "function-level imports of the package's own modules:\n" + "\n".join(found)


def test_only_the_schema_spells_the_projects_tags() -> None:
    pattern = re.compile(
        r"[\"'](?:tags\.)?sota_ablate\.(?:complete|failure|failure_type|role|resumes|resumed_from_epoch)"
    )
    found = []
    for name, path in MODULES.items():
        if name == "sota_ablate.schema":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}")
    assert not found, "MLflow tag names outside sota_ablate/schema.py:\n" + "\n".join(found)


def test_the_checker_sees_cycles_and_lazy_imports(tmp_path: Path) -> None:
    """The checks above can fail: a cycle and a lazy import in a throwaway graph are found."""
    sorter = graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}})
    try:
        sorter.prepare()
    except graphlib.CycleError:
        pass
    else:
        raise AssertionError("graphlib did not report the cycle")
    tree = ast.parse("def f():\n    from sota_ablate import plan\n")
    node = tree.body[0].body[0]  # type: ignore[attr-defined]
    assert _targets(node, "sota_ablate.cli") == ["sota_ablate.plan"]
