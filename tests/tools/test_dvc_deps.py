"""Each dvc.yaml stage depends on exactly the project code it runs: its entry module
and every project module that imports, transitively (lazy imports too), as
`python -m tools.dvc_deps --write` writes them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from src.config.design import best_params_file
from src.config.layout import PROJECT_ROOT
from src.config.stages import TRAINING_STAGES
from tools.dvc_deps import code_closure, generate, imported_modules, module_file

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


def test_dvc_yaml_is_what_the_generator_writes():
    """`python -m tools.dvc_deps --check` passes: no hand edit has drifted from the imports."""
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    assert generate(text) == text, "run: python -m tools.dvc_deps --write"


def test_generator_rewrites_code_deps_and_keeps_the_rest():
    stale = (
        "stages:\n  download:\n    cmd: python -m pipelines.download\n    deps:\n"
        "      - src/gone.py\n      - data/raw  # kept\n    outs:\n      - data/x\n"
    )
    written = generate(stale)
    assert "src/gone.py" not in written
    assert "      - pipelines/download.py\n" in written
    assert written.endswith("      - data/raw  # kept\n    outs:\n      - data/x\n")
    assert generate(written) == written


def test_no_training_or_data_stage_draws_figures():
    """Figures are drawn downstream (`pipelines.figures`): a figure or report edit reruns
    no training and no download."""
    for entry in ("pipelines.train", "pipelines.download"):
        closure = code_closure(entry)
        assert not [f for f in closure if f.startswith("src/report/")], entry


def test_closure_follows_lazy_imports_and_packages():
    closure = code_closure("src.tune.__main__")
    assert {"src/tune/__init__.py", "src/tune/search.py", "src/training/loop.py"} <= closure
    # src.report.network imports src.training.models inside a function only
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
    from src.artifacts import StagePaths
    from src.config.layout import Layout
    from src.data.prepare import MANIFEST
    from src.report.formats import FIGURE_DIR

    layout = Layout(Path())  # relative paths, as dvc.yaml spells them

    def paths(stage: str) -> StagePaths:
        return StagePaths.for_stage(stage, layout.root)

    training = {
        stage: {
            "deps": {layout.data},
            "outs": {p.model, p.history, p.predictions},
            "metrics": {p.metrics},
        }
        for stage, p in ((s.name, paths(s.name)) for s in TRAINING_STAGES)
    }
    study = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["tune"]["study"]
    for stage in TRAINING_STAGES:
        if not stage.own_section:  # the tuned stage: its design is the study's best trial
            training[stage.name]["deps"].add(best_params_file(layout.tune_reports, study))
    report_deps = {layout.data / MANIFEST, paths("download").metrics}
    for stage in training:
        report_deps |= {paths(stage).metrics, paths(stage).history, paths(stage).model}
    report_deps |= {layout.tune_reports, layout.discussion}
    report_deps |= {layout.seeds, layout.benchmark, layout.fp32_runs}
    figures = {
        f"figures-{stage}": {
            "deps": {p.metrics, p.history, p.predictions},
            "outs": {p.learning_curves, p.confusion_matrix},
            "metrics": set(),
        }
        for stage, p in ((s, paths(s)) for s in training)
    }
    return {
        "download": {
            "deps": set(),
            "outs": {layout.data},
            "metrics": {paths("download").metrics},
        },
        **training,
        "figures-download": {
            "deps": {layout.data, paths("download").metrics},
            "outs": {paths("download").samples},
            "metrics": set(),
        },
        **figures,
        "report": {
            "deps": report_deps,
            "outs": {
                layout.report_md,
                layout.report_html,
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
