"""What a run says it ran: a clean tree stays clean for what `dvc repro` and `-S` write,
the params keys that differ from the commit, and the profile those params are."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from src.config.layout import PROJECT_ROOT
from src.config.load import load_params, load_raw
from src.config.overrides import set_param_args
from src.quick import quick_overrides
from src.tracking import naming as run_layout
from src.tracking import provenance


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the real params.yaml, a code file and DVC's outputs."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    for name in ("dvc.lock", "metrics.json", "predictions.csv", "code.py"):
        (tmp_path / name).write_text("a\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    return tmp_path


def _set(root: Path, **dotted) -> None:
    """What `dvc exp run -S key=value` does to params.yaml (DVC's own code)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(root / "params.yaml"), set_param_args(dotted)[1::2])


def test_git_dirty_ignores_what_dvc_repro_and_set_values_write(repo):
    assert provenance.git_info(repo)["git_dirty"] == "false"
    (repo / "dvc.lock").write_text("b\n")
    (repo / "metrics.json").write_text("b\n")
    (repo / "predictions.csv").write_text("b\n")
    _set(repo, **{"baseline.train.epochs": 2})
    assert provenance.git_info(repo)["git_dirty"] == "false"
    assert provenance.params_changed(repo) == ["baseline.train.epochs"]
    (repo / "code.py").write_text("b\n")
    assert provenance.git_info(repo)["git_dirty"] == "true"


def test_a_hand_edit_is_listed_and_makes_the_run_custom(repo):
    assert provenance.params_changed(repo) == []
    assert provenance.profile_label(root=repo) == "full"
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["improved"]["train"]["lr"] = 0.1
    del raw["resnet"]["train"]["subset"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))  # comments and order gone
    assert provenance.params_changed(repo) == ["improved.train.lr", "resnet.train.subset"]
    assert provenance.profile_label(root=repo) == "custom"
    assert provenance.profile_label("quick", root=repo) == "quick"  # applied in-process wins


def test_the_quick_profiles_values_make_a_quick_run(repo):
    overrides = quick_overrides(load_raw(repo / "params.yaml"))
    _set(repo, **overrides)
    assert provenance.params_changed(repo) == sorted(overrides)
    assert provenance.profile_label(root=repo) == "quick"
    assert provenance.git_info(repo)["git_dirty"] == "false"
    # a quick run with one more value is still the quick profile; the tag names the value
    _set(repo, **{"baseline.train.lr": 0.1})
    assert provenance.profile_label(root=repo) == "quick"
    assert "baseline.train.lr" in provenance.params_changed(repo)
    # only part of the profile: custom
    _set(repo, **{"resnet.weights": "imagenet"})
    assert provenance.profile_label(root=repo) == "custom"


def test_an_edit_of_the_profiles_alone_is_no_custom_run(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["profiles"]["quick"]["baseline.train.epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    assert provenance.params_changed(repo) == ["profiles.quick.baseline.train.epochs"]
    assert provenance.profile_label(root=repo) == "full"


def test_outside_git_nothing_is_changed(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    assert provenance.params_changed(tmp_path) == []
    assert provenance.profile_label(root=tmp_path) == "full"
    assert provenance.git_info(tmp_path)["git_commit"] == "unknown"


def test_run_names_say_what_a_run_is():
    assert run_layout.run_name("baseline", "full") == "baseline"
    assert run_layout.run_name("baseline", "quick", "quick") == "baseline (quick)"
    assert run_layout.run_name("improved", "custom", "tuned-cpu") == "improved (tuned-cpu)"
    assert run_layout.run_name("baseline", "custom") == "baseline (custom)"
    assert run_layout.run_name("report", None, "quick") == "report (quick)"
    assert run_layout.run_name("report", None) == "report"


def test_a_quick_experiments_run_says_quick_and_is_clean(repo, monkeypatch):
    """What the runs list shows for a stage of `python -m src.quick` (DVC sets
    DVC_EXP_NAME and writes the -S values into the copy's params.yaml)."""
    import mlflow

    from src.tracking.runs import run_params, stage_run
    from tests.conftest import _isolate

    _isolate(monkeypatch, repo)
    monkeypatch.setenv("DVC_EXP_NAME", "quick")
    _set(repo, **quick_overrides(load_raw(repo / "params.yaml")))
    params = load_params(repo / "params.yaml")
    logged = run_params(params, params.baseline)
    assert logged["profile"] == "quick" and "model.image_size" not in logged
    with stage_run("baseline", logged, system_metrics=False) as run:
        pass
    got = mlflow.MlflowClient().get_run(run.run_id)
    assert got.info.run_name == "baseline (quick)"
    assert got.data.params["profile"] == "quick" and got.data.params["image_size"] == "32"
    tags = got.data.tags
    assert tags["git_dirty"] == "false" and tags["dvc_exp_name"] == "quick"
    quick = quick_overrides(load_raw(PROJECT_ROOT / "params.yaml"))
    assert tags["params_changed"].split(", ") == sorted(quick)
    assert (repo / "mlflow.db").is_file()  # MLflow's default place
