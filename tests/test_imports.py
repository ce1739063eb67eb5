"""The library packages stay light and layered.

1. Importing any module of `common`, `magep`, `transformer_nfn` or `tsw_sl` (each in a fresh interpreter)
   imports none of matplotlib, POT, scikit-learn, tqdm, safetensors, xgboost, lightgbm: those belong to the
   ``bench``, ``formats`` and ``trees`` extras and to functions that import them when called.
2. The import graph follows the layering rules: `common` imports none of the other packages; `magep` and
   `tsw_sl` import only `common`; `transformer_nfn` imports `common` and `magep`; nothing imports `benchmarks`.
   Checked on the source (every import statement, including those inside functions).
3. No module of the packages uses another module's private names (``from m import _f``, ``obj._method``
   on anything but ``self``/``cls``): a helper used across modules is public.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("common", "magep", "transformer_nfn", "tsw_sl")
HEAVY = ("matplotlib", "ot", "sklearn", "tqdm", "safetensors", "xgboost", "lightgbm")
PROJECT = LIBRARY + ("benchmarks",)
ALLOWED = {  # package -> project packages it may import (besides itself)
    "common": set(),
    "magep": {"common"},
    "tsw_sl": {"common"},
    "transformer_nfn": {"common", "magep"},
    "benchmarks": set(LIBRARY),
}

# One fresh interpreter imports every module of the packages one package after another and reports the top-level
# modules each package loads that were not loaded before it. A heavy module is then reported under the first package
# that imports it (the later ones find it loaded), and one never loaded is imported by none of them.
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
report, before = {{}}, set(sys.modules)
for name in {names!r}:
    package = importlib.import_module(name)
    modules = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for module in modules:
        importlib.import_module(module)
    report[name] = {{"modules": modules, "loaded": sorted({{k.split(".")[0] for k in set(sys.modules) - before}})}}
    before = set(sys.modules)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def imported():
    """``{package: {"modules": every module of it, "loaded": top-level modules it loaded first}}``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(names=LIBRARY)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", LIBRARY)
def test_importing_a_package_loads_no_heavy_dependency(package, imported):
    report = imported[package]
    assert len(report["modules"]) > 1, report["modules"]  # the walk found the submodules
    heavy = sorted(set(HEAVY) & set(report["loaded"]))
    assert not heavy, f"importing every module of {package} imports {heavy}"


def test_silent_progress_bar_needs_no_tqdm():
    code = """
import sys
from common.progress import progress_bar
bar = progress_bar(range(3), enabled=False, desc="x")
assert list(bar) == [0, 1, 2]
with progress_bar(total=5, enabled=False) as bar:
    bar.update(2)
    bar.set_postfix({"loss": 1.0})
print("tqdm" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _imported_packages(path: str) -> set[str]:
    """Top-level names of the absolute imports in one source file (relative imports stay in the package)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _project_imports(package: str) -> dict[str, set[str]]:
    """``{source file: project packages it imports}`` for every .py file under ``package``."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                out[os.path.relpath(path, ROOT)] = (_imported_packages(path) & set(PROJECT)) - {package}
    return out


@pytest.mark.parametrize("package", PROJECT)
def test_layering(package):
    imports = _project_imports(package)
    assert imports, f"no sources found under {package}"
    bad = {path: sorted(found - ALLOWED[package]) for path, found in imports.items() if found - ALLOWED[package]}
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}; found {bad}"


def test_layering_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from . import x\nimport common.nets\n\ndef f():\n    from benchmarks import harness\n")
    assert _imported_packages(str(source)) == {"common", "benchmarks"}


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public despite the underscore


def _private_uses(path: str) -> list[str]:
    """``"line: expression"`` for each private name a file takes from another module or object."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in NAMEDTUPLE_API:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("package", PROJECT)
def test_no_private_names_across_modules(package):
    uses = {path: _private_uses(os.path.join(ROOT, path)) for path in _project_imports(package)}
    uses = {path: found for path, found in uses.items() if found}
    assert not uses, f"private names used across modules (make them public or move them): {uses}"


def test_private_use_check_sees_both_forms(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from a import _f, g\nx = ws._axis(0)\ny = self._z + t._replace(a=1).b\n")
    assert _private_uses(str(source)) == ["1: import _f", "2: ws._axis"]
