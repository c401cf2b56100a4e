"""The package stays in parts one person can hold in mind: sizes, import direction, private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_llm_manager"
MODULES = {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, tree: ast.Module) -> set[str]:
    """Modules of the package this one imports when it runs (``if TYPE_CHECKING:`` blocks aside)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jupyter_llm_manager")}
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
        if not target.startswith("jupyter_llm_manager"):
            continue
        names = {f"{target}.{a.name}" for a in node.names}
        found |= {n for n in names if n in KNOWN} or {target}
    return {name for name in found if name in KNOWN} - {module_name(path)}


KNOWN = {module_name(path) for path in MODULES}


def test_no_module_is_longer_than_five_hundred_lines():
    long = {module_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert {m: n for m, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_no_class_is_longer_than_three_hundred_lines():
    long = {f"{module_name(p)}.{node.name}": node.end_lineno - node.lineno + 1
            for p, tree in MODULES.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert {c: n for c, n in long.items() if n > MAX_CLASS_LINES} == {}


def test_the_package_has_no_import_cycle():
    graph = {module_name(p): runtime_imports(p, tree) for p, tree in MODULES.items()}
    graph = {name: {i for i in imports if not name.startswith(i + ".") and i != "jupyter_llm_manager"}
             for name, imports in graph.items()}  # a module importing its own package's __init__ is no cycle
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for child in sorted(graph.get(name, ())):
            if child in path:
                cycles.append(path[path.index(child):] + [child])
            elif child not in done:
                visit(child, path + [child])
        done.add(name)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_the_core_imports_no_front_end():
    front_ends = {"jupyter_llm_manager." + m for m in ("magics", "dashboard", "lab", "cli", "commands", "asking",
                                                        "actions", "magic_args", "rendering", "tables", "plan_view")}
    entry_points = {"jupyter_llm_manager", "jupyter_llm_manager.__main__"}
    core = [p for p in MODULES if module_name(p) not in front_ends | entry_points]
    leaks = {module_name(p): runtime_imports(p, MODULES[p]) & front_ends for p in core}
    assert {m: i for m, i in leaks.items() if i} == {}


def test_no_module_uses_another_modules_private_names():
    defined: dict[str, set[str]] = {}
    for path, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                defined.setdefault(node.name, set()).add(module_name(path))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                defined.setdefault(node.attr, set()).add(module_name(path))
    offenders = []
    for path, tree in MODULES.items():
        here = module_name(path)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = defined.get(node.attr, set())
            if owners and here not in owners:
                offenders.append(f"{here}:{node.lineno} {ast.unparse(node)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and any(a.name.startswith("_") for a in node.names):
                offenders.append(f"{here}:{node.lineno} imports {[a.name for a in node.names]}")
    assert offenders == []
