"""Each dvc.yaml stage depends on exactly the project code it runs: its entry module
and every project module that imports, transitively (lazy imports too)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from src.config.layout import PROJECT_ROOT
from src.stages import TRAINING_STAGES

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
    assert {"src/tune/__init__.py", "src/tune/search.py", "src/training/loop.py"} <= closure
    # src.report.blocks imports src.training.models inside a function only
    assert "src/training/models.py" in code_closure("src.report.build")


def test_the_data_stage_runs_no_training_serving_or_model_code():
    """Editing the networks, the training loop or the served model never reruns `download`."""
    closure = code_closure("pipelines.download")
    assert not [f for f in closure if f.startswith("src/training/")]
    assert not closure & {"src/tracking/registry.py", "src/inference/classifier.py"}


@pytest.mark.parametrize("package", ["src.tracking", "src.report"])
def test_imports_within_a_package_run_one_way(package):
    """No circle among a package's modules (lazy imports included)."""
    folder = PROJECT_ROOT / package.replace(".", "/")
    modules = {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    edges = {m: imported_modules(module_file(m)) & modules for m in modules}
    done: set[str] = set()
    while len(done) < len(modules):  # peel off modules whose imports are all done
        ready = {m for m in modules - done if edges[m] <= done}
        assert ready, f"import circle among {sorted(modules - done)}"
        done |= ready


# --------------------------------------------------------------------------- fixed layout


def _names(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def _code_layout() -> dict:
    """Every out, metric and data dep of each stage, as the code writes and reads them."""
    from pipelines.download import SAMPLES_FILE
    from src.artifacts import StagePaths
    from src.config.layout import Layout
    from src.data.prepare import MANIFEST
    from src.report import build as report
    from src.report.blocks import FIGURE_DIR
    from src.report.inputs import DISCUSSION_FILE, TUNE_DIR
    from src.spread import SEEDS_DIR

    layout = Layout(Path())  # relative paths, as dvc.yaml spells them

    def paths(stage: str) -> StagePaths:
        return StagePaths.for_stage(stage, layout.root)

    training = {
        stage: {
            "deps": {layout.data},
            "outs": {p.model, p.learning_curves, p.confusion_matrix, p.history},
            "metrics": {p.metrics},
        }
        for stage, p in ((s.name, paths(s.name)) for s in TRAINING_STAGES)
    }
    report_deps = {layout.data / MANIFEST, paths("download").metrics}
    for stage in training:
        report_deps |= {paths(stage).metrics, paths(stage).history, paths(stage).model}
    report_deps |= {layout.reports / TUNE_DIR, layout.reports / DISCUSSION_FILE}
    report_deps |= {layout.reports / SEEDS_DIR}
    return {
        "download": {
            "deps": set(),
            "outs": {layout.data, paths("download").reports / SAMPLES_FILE},
            "metrics": {paths("download").metrics},
        },
        **training,
        "report": {
            "deps": report_deps,
            "outs": {
                layout.reports / report.REPORT_FILE,
                layout.reports / report.HTML_FILE,
                layout.reports / FIGURE_DIR,
            },
            "metrics": set(),
        },
    }


def test_dvc_yaml_paths_are_exactly_the_code_layout():
    """DVC deletes outs before a stage runs: dvc.yaml names them literally (no `${...}`
    a params value could move), and they are where the code writes."""
    declared = {
        name: {
            "deps": {Path(d) for d in stage["deps"] if not d.endswith(".py")},
            "outs": {Path(o) for o in _names(stage.get("outs", []))},
            "metrics": {Path(m) for m in _names(stage.get("metrics", []))},
        }
        for name, stage in STAGES.items()
    }
    assert declared == _code_layout()
    plotted = set()
    for entry in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["plots"]:
        (plot,) = entry.values()
        plotted |= {Path(p) for p in plot["y"]}
    training = tuple(s.name for s in TRAINING_STAGES)
    assert plotted == {p for s in training for p in _code_layout()[s]["outs"] if p.suffix == ".csv"}
    assert "${" not in (PROJECT_ROOT / "dvc.yaml").read_text()


def test_no_out_holds_what_must_survive_a_rerun():
    """Downloaded archives, checkpoints and stage locks, the MLflow store: never outs."""
    from src.config.layout import Layout

    layout = Layout(Path())
    kept = (layout.raw, layout.checkpoints, Path("mlruns"), Path("optuna"))
    for name, stage in STAGES.items():
        for out in _names(stage.get("outs", [])) | _names(stage.get("metrics", [])):
            for folder in kept:
                assert not Path(out).is_relative_to(folder), f"{name}: {out} is in {folder}"
                assert not folder.is_relative_to(out), f"{name}: {out} holds {folder}"
