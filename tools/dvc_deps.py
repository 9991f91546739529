"""Each dvc.yaml stage's code deps, generated from the import graph: its entry module and
every project module that imports, transitively (lazy imports too).

    python -m tools.dvc_deps --write    rewrite the `.py` lines of every stage's deps
    python -m tools.dvc_deps --check    exit 1, naming the stages, when dvc.yaml differs

Only the `.py` entries of a stage's `deps:` list are written; data deps, comments and the
rest of dvc.yaml stay as they are. A stage whose deps are a YAML alias (`*train_deps`)
shares its anchor's list (same command module: same closure).
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("src", "pipelines", "benchmarks")  # top-level packages: empty __init__.py
DVC_YAML = ROOT / "dvc.yaml"

_STAGE = re.compile(r"^  (?P<name>[\w-]+):\s*$")
_CMD = re.compile(r"^    cmd:\s*(?P<cmd>.+?)\s*$")
_DEPS = re.compile(r"^    deps:(?P<rest>.*)$")
_ITEM = re.compile(r"^      - (?P<path>[^\s#]+)(?P<tail>.*)$")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    base = root / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The project modules `path` imports anywhere in its body, with their packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name, root) is not None:
                found.add(name)
    for name in list(found):  # importing a.b.c runs the __init__ of a.b
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return {m for m in found if m not in PACKAGES}


def code_closure(entry: str, root: Path = ROOT) -> set[str]:
    """Files (relative to `root`) that `python -m entry` imports, itself included."""
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += imported_modules(module_file(module, root), root)
    return {module_file(m, root).relative_to(root).as_posix() for m in seen}


def command_module(cmd: str) -> str:
    argv = shlex.split(cmd)
    if argv[:2] != ["python", "-m"]:
        raise ValueError(f"expected `python -m <module> ...`, not {cmd!r}")
    return argv[2]


def generate(text: str, root: Path = ROOT) -> str:
    """dvc.yaml's text with each stage's `.py` deps replaced by its code closure (sorted,
    ahead of the other deps, which keep their order and comments)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    cmd = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _STAGE.match(line):
            cmd = ""
        elif m := _CMD.match(line):
            cmd = m["cmd"]
        elif (m := _DEPS.match(line)) and not m["rest"].strip().startswith("*"):
            out.append(line)
            i += 1
            others = []
            while i < len(lines) and (item := _ITEM.match(lines[i])):
                if not item["path"].endswith(".py"):
                    others.append(lines[i])
                i += 1
            code = sorted(code_closure(command_module(cmd), root))
            out += [f"      - {path}\n" for path in code] + others
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml differs")
    args = parser.parse_args(argv)
    text = DVC_YAML.read_text()
    wanted = generate(text)
    if args.write:
        if wanted != text:
            DVC_YAML.write_text(wanted)
        print(f"{DVC_YAML.name}: code deps {'rewritten' if wanted != text else 'up to date'}")
        return 0
    if wanted != text:
        print(
            f"{DVC_YAML.name}: code deps differ from the imports: python -m tools.dvc_deps --write"
        )
        return 1
    print(f"{DVC_YAML.name}: code deps up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
