"""Each dvc.yaml stage depends on exactly the project code it runs: its entry module
and every project module that imports, transitively (lazy imports too)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from src.config import PROJECT_ROOT

PACKAGES = ("src", "pipelines", "benchmarks")  # top-level packages: empty __init__.py


def module_file(module: str) -> Path | None:
    base = PROJECT_ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports anywhere in its body, with their packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name) is not None:
                found.add(name)
    for name in list(found):  # importing a.b.c runs the __init__ of a.b
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return {m for m in found if m not in PACKAGES}


def code_closure(entry: str) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += imported_modules(module_file(module))
    return {module_file(m).relative_to(PROJECT_ROOT).as_posix() for m in seen}


STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_code_deps_are_exactly_its_imports(name):
    stage = STAGES[name]
    cmd = shlex.split(stage["cmd"])
    assert cmd[:2] == ["python", "-m"], f"{name}: expected `python -m <module>`"
    expected = code_closure(cmd[2])
    declared = {d for d in stage["deps"] if d.endswith(".py")}
    assert sorted(declared - expected) == [], f"{name}: deps it does not import"
    assert sorted(expected - declared) == [], f"{name}: imports missing from its deps"


def test_closure_follows_lazy_imports_and_packages():
    closure = code_closure("src.tune.__main__")
    assert {"src/tune/__init__.py", "src/tune/search.py", "src/train.py"} <= closure
    # src.report imports src.models inside a function only
    assert "src/models.py" in code_closure("src.report")
