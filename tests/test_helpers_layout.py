"""Nothing the tests or benchmarks put first on ``sys.path`` can take the place of an installed package.

pytest puts the first folder above a test module that is not a package (here
``tests/``) first on ``sys.path``, and a benchmark script runs with its own
folder first. A module there named like a top-level module of an installed
distribution is imported in that module's place by every library that
imports it (a helper named ``kernels`` once broke every transformers load when
transformers began to import Hugging Face's ``kernels``). Helpers live in the
``jlm_helpers`` package instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"jupyter_llm_manager", "jupyter-llm-manager"}


def first_on_path(folder: Path) -> Path:
    """The folder pytest puts on ``sys.path`` for modules in ``folder`` (the first one up that is no package)."""
    while (folder / "__init__.py").exists():
        folder = folder.parent
    return folder


def importable_names(folder: Path) -> set[str]:
    """Top-level modules and regular packages a folder on ``sys.path`` offers (namespace folders never shadow)."""
    names = {path.name.split(".")[0] for path in folder.iterdir()
             if path.is_file() and path.suffix in (".py", ".so", ".pyd", ".pyc")}
    return names | {path.name for path in folder.iterdir() if path.is_dir() and (path / "__init__.py").exists()}


def shadowed(folder: Path) -> list[str]:
    installed = importlib.metadata.packages_distributions()
    return sorted(f"{name} (installed by {', '.join(sorted(set(installed[name])))})"
                  for name in importable_names(folder) if name in installed and not set(installed[name]) <= OURS)


def test_no_module_on_the_tests_path_has_the_name_of_an_installed_package():
    folder = first_on_path(ROOT / "tests")
    assert shadowed(folder) == [], f"rename these modules in {folder} (put helpers in tests/jlm_helpers/)"


def test_no_benchmark_has_the_name_of_an_installed_package():
    assert shadowed(ROOT / "benchmarks") == [], "rename these benchmarks: a script's folder comes first on sys.path"


def test_the_check_sees_a_helper_named_like_an_installed_package(tmp_path):
    """The check itself: a module named like an installed distribution's module is found."""
    (tmp_path / "yaml.py").write_text("")  # PyYAML's top-level module
    (tmp_path / "my_own_helper.py").write_text("")
    assert [entry.split(" ")[0] for entry in shadowed(tmp_path)] == ["yaml"]
