"""The package stays in parts one person can hold in mind: sizes, import direction, private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_llm_manager"
MODULES = {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]


def package_imports(path: Path, tree: ast.Module) -> set[str]:
    """Modules of the package this one imports: at the top, inside functions, under ``if TYPE_CHECKING:`` and
    through ``importlib.import_module("...")`` or ``__import__("...")``."""
    found: set[str] = set(named_imports(path, tree)[0])
    package = package_of(path)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
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
_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _import_functions(tree: ast.Module) -> dict[str, str]:
    """The names this module calls ``importlib.import_module`` or ``__import__`` by (``as`` aliases too)."""
    names = {name: name for name in _IMPORT_FUNCTIONS}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("importlib", "builtins"):
            names |= {a.asname: a.name for a in node.names if a.name in _IMPORT_FUNCTIONS and a.asname}
    return names


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def named_imports(path: Path, tree: ast.Module) -> tuple[set[str], list[str]]:
    """Modules imported by a call with a name in a string (``import_module("x")``, ``__import__("x")``), and the
    calls whose name is not a constant (``lineno: source``): no test can tell what those import."""
    functions, found, unknown = _import_functions(tree), set[str](), list[str]()
    package = package_of(path)
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        called = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
        name = functions.get(called or "")
        if name is None:
            continue
        target = _constant(_argument(call, 0, "name"))
        if target is None:
            unknown.append(f"{call.lineno}: {ast.unparse(call)}")
            continue
        level = len(target) - len(target.lstrip("."))
        if name != "import_module":  # __import__(name, globals, locals, fromlist, level)
            given = _argument(call, 4, "level")
            level = given.value if isinstance(given, ast.Constant) and isinstance(given.value, int) else 0
            fromlist = _argument(call, 3, "fromlist")
            subnames = [_constant(e) for e in fromlist.elts] if isinstance(fromlist, (ast.List, ast.Tuple)) else []
        else:
            subnames = []
        base = package
        for _ in range(max(level - 1, 0)):
            base = base.rpartition(".")[0]
        target = target.lstrip(".")
        module = (f"{base}.{target}" if target else base) if level else target
        found |= {module} | {f"{module}.{sub}" for sub in subnames if sub}
    return {name for name in found if name in KNOWN}, unknown


def test_no_module_is_longer_than_five_hundred_lines():
    long = {module_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert {m: n for m, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_no_class_is_longer_than_two_hundred_fifty_lines():
    long = {f"{module_name(p)}.{node.name}": node.end_lineno - node.lineno + 1
            for p, tree in MODULES.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert {c: n for c, n in long.items() if n > MAX_CLASS_LINES} == {}


def test_the_package_has_no_import_cycle():
    graph = {module_name(p): package_imports(p, tree) for p, tree in MODULES.items()}
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


#: The layers, top first: a module imports modules of its own layer or of layers below it, never above.
LAYERS = (
    ("front-ends", ("frontends",)),
    ("the manager", ("manager",)),
    ("the pure policy", ("manager.policy",)),
    ("configuration, backends, devices, estimates, models", ("config", "backends", "devices", "estimates", "gguf",
                                                              "models")),
    ("support and the shared vocabulary", ("support", "errors", "events", "generation", "reports")),
)
ENTRY_POINTS = {"jupyter_llm_manager", "jupyter_llm_manager.__main__"}
MAX_MODULES_PER_FOLDER = 15


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the most specific layer that holds ``module``."""
    relative = module.removeprefix("jupyter_llm_manager.")
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if relative == prefix or relative.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_imports_point_down_the_layers():
    upward = []
    for path, tree in MODULES.items():
        here = module_name(path)
        if here in ENTRY_POINTS:
            continue
        for imported in package_imports(path, tree) - ENTRY_POINTS:
            if layer_of(imported) < layer_of(here):
                upward.append(f"{here} ({LAYERS[layer_of(here)][0]}) imports {imported} "
                              f"({LAYERS[layer_of(imported)][0]})")
    assert upward == []


def test_no_folder_holds_more_than_fifteen_modules():
    folders: dict[str, list[str]] = {}
    for path in MODULES:
        if path.name != "__init__.py":
            folders.setdefault(str(path.parent.relative_to(PACKAGE.parent)), []).append(path.stem)
    assert {folder: len(names) for folder, names in folders.items() if len(names) > MAX_MODULES_PER_FOLDER} == {}


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


def test_old_module_paths_give_the_modules_at_their_new_paths():
    import importlib

    from jupyter_llm_manager.support.moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(f"jupyter_llm_manager.{old}") is importlib.import_module(
            f"jupyter_llm_manager.{new}"), old
    from jupyter_llm_manager.config import load_config  # these two are packages now: they re-export
    from jupyter_llm_manager.manager import LLMManager

    assert callable(load_config) and LLMManager.__name__ == "LLMManager"


#: What a front-end may import from the manager: the public API, the facade and the kernel singleton's module.
FRONTENDS_MAY_IMPORT = {"jupyter_llm_manager", "jupyter_llm_manager.manager.facade",
                        "jupyter_llm_manager.manager.kernel"}


def test_front_ends_import_only_the_public_api_of_the_manager():
    """Front-ends see the manager through its public API alone, however they import (a function, TYPE_CHECKING,
    importlib): what they need is a facade method or lives in a layer below the manager."""
    found = []
    for path, tree in MODULES.items():
        here = module_name(path)
        if here in ENTRY_POINTS or layer_of(here) != 0:
            continue
        internals = {i for i in package_imports(path, tree) if i not in FRONTENDS_MAY_IMPORT
                     and (i == "jupyter_llm_manager.manager" or i.startswith("jupyter_llm_manager.manager."))}
        found += [f"{here} imports {name}" for name in sorted(internals)]
        found += [f"{here}:{call} (a module named at run time)" for call in named_imports(path, tree)[1]]
    assert found == []


def test_the_front_end_rule_sees_every_way_of_importing(tmp_path):
    """The rule above catches imports at the top, in functions, under TYPE_CHECKING and through importlib."""
    sources = {
        "from ..manager.generations import text_model": {"jupyter_llm_manager.manager.generations"},
        "def f():\n    from ..manager import state": {"jupyter_llm_manager.manager.state"},
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..manager.policy import fit":
            {"jupyter_llm_manager.manager.policy.fit"},
        "import importlib\nimportlib.import_module('jupyter_llm_manager.manager.status')":
            {"jupyter_llm_manager.manager.status"},
        "from importlib import import_module as load\nload('..manager.planning', __package__)":
            {"jupyter_llm_manager.manager.planning"},
        "__import__('jupyter_llm_manager.manager', fromlist=['handles'])":
            {"jupyter_llm_manager.manager", "jupyter_llm_manager.manager.handles"},
        "__import__('manager.wiring', globals(), locals(), [], 2)": {"jupyter_llm_manager.manager.wiring"},
    }
    path = PACKAGE / "frontends" / "probe.py"  # never written: parsed as if it lived there
    for source, expected in sources.items():
        assert package_imports(path, ast.parse(source)) == expected, source
    assert named_imports(path, ast.parse("import importlib\nimportlib.import_module(name)"))[1]
