"""The written map stays true: every cross-reference in docstrings and in docs/ names something that exists.

Docstrings point at modules, classes and functions with ``:mod:``, ``:class:``,
``:func:``, ``:meth:``, ``:data:`` and ``:attr:`` (``~`` and leading dots as Sphinx reads
them); the docs name files and folders of the package (``manager/policy/``,
``cooperation/ledger.py``). A module that moves, or a class that is renamed,
must take its references along.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jupyter_llm_manager"
ROLE = re.compile(r":(mod|class|func|meth|data|attr|exc):`~?([\w.]+)`")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docstrings(tree: ast.Module) -> list[tuple[str, str]]:
    """(text, the class it is in or "") for every docstring and string constant that holds a reference."""
    found = [(ast.get_docstring(tree) or "", "")]
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found += [(ast.get_docstring(inner) or "", node.name) for inner in ast.walk(node)
                      if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((ast.get_docstring(node) or "", ""))
    constants = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return found + [(text, "") for text in constants if ROLE.search(text)]


def resolves(target: str, here: str, within: str = "") -> bool:
    """Whether ``target`` names a module, or an attribute of one, seen from the module ``here`` (and its class
    ``within``): a dotted path, one relative to the module's package, or a name of the module, of the class or
    of the package's public API."""
    if target.startswith("."):
        dots = len(target) - len(target.lstrip("."))
        package = here if (PACKAGE / Path(*here.split(".")[1:]) / "__init__.py").exists() else here.rpartition(".")[0]
        for _ in range(dots - 1):
            package = package.rpartition(".")[0]
        candidates = [f"{package}.{target.lstrip('.')}"]
        while "." in package:  # Sphinx also looks in the enclosing packages
            package = package.rpartition(".")[0]
            candidates.append(f"{package}.{target.lstrip('.')}")
    else:
        candidates = [target, f"{here}.{target}", f"{here.rpartition('.')[0]}.{target}", f"jupyter_llm_manager.{target}",
                      f"builtins.{target}"]
        if within:
            candidates.append(f"{here}.{within}.{target}")
        if "." not in target:  # a method or attribute named from the module's text: one of its classes has it
            module = importlib.import_module(here)
            candidates += [f"{here}.{name}.{target}" for name, value in vars(module).items()
                           if isinstance(value, type) and value.__module__ == here]
    return any(_found(candidate) for candidate in candidates if not candidate.startswith("."))


def _found(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: ModuleType | object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            return False
        return True
    return False


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_docstring_reference_resolves(path):
    here = module_name(path)
    broken = sorted({f"{role}:{target}" for text, within in docstrings(ast.parse(path.read_text()))
                     for role, target in ROLE.findall(text) if not resolves(target, here, within)})
    assert broken == [], f"{here} refers to what does not exist"


PATH = re.compile(r"`((?:manager|frontends|backends|config|reports|support|models|gguf|policy|cooperation|admission|"
                  r"unloading|adapters|api|views|notebook|transformers|llama_cpp|openai)/[\w/]*(?:\.py)?)`")


def package_path(text: str) -> bool:
    """A path written in the docs, from the package's root or from any folder in it."""
    return any((folder / text).exists() for folder in [PACKAGE, *[p for p in PACKAGE.rglob("*") if p.is_dir()]])


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"], ids=lambda p: p.name)
def test_every_package_path_and_reference_in_the_docs_exists(page):
    text = page.read_text()
    missing = sorted({path for path in PATH.findall(text) if not package_path(path)})
    broken = sorted({f"{role}:{target}" for role, target in ROLE.findall(text)
                     if not resolves(target, "jupyter_llm_manager")})
    assert missing == [] and broken == [], f"{page.name} names what does not exist"


def test_the_check_finds_a_broken_reference():
    assert resolves("jupyter_llm_manager.manager.facade.LLMManager", "jupyter_llm_manager")
    assert resolves(".state", "jupyter_llm_manager.manager.facade")
    assert not resolves("jupyter_llm_manager.manager.books", "jupyter_llm_manager")
    assert not package_path("manager/placement_lock.py")


def test_every_module_the_architecture_page_names_exists():
    """The map names modules bare (``fit.py, decision.py``) in its layout: each is a file of the project."""
    named = set(re.findall(r"(?<![\w/.])([\w/]*\w\.py)\b", (ROOT / "docs" / "architecture.md").read_text()))
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    missing = sorted(n for n in named if not package_path(n) and not any(f == n or f.endswith("/" + n) for f in files))
    assert missing == [], "docs/architecture.md names modules that do not exist"
