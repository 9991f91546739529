"""The `tuned` stage: tune.base's design with the committed study's best knobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from src.config.design import best_params_file
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.runtime.errors import ConfigError
from tests.conftest import update_params

KNOBS = {"width": 0.5, "blocks": 3, "lr": 0.02, "momentum": 0.9, "scheduler": "onecycle"}


def _write_best(root: Path, knobs: dict) -> Path:
    tune = yaml.safe_load((root / "params.yaml").read_text())["tune"]
    path = best_params_file(root / "reports/tune", tune["study"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# the best trial (a test's)\n" + yaml.safe_dump({"knobs": knobs}))
    return path


def test_dvc_yaml_reads_the_study_that_params_yaml_names():
    """The stage's params are tune.base's section and tune.study's best_params.yaml: one
    path, spelled in dvc.yaml as src.config.design computes it."""
    tune = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["tune"]
    stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["tuned"]
    expected = best_params_file(Path("reports/tune"), tune["study"]).as_posix()
    assert expected in stage["deps"] and "data/cifar10" in stage["deps"]
    assert tune["base"] in stage["params"]
    assert {"tune.base", "tune.study"} <= set(p for p in stage["params"] if isinstance(p, str))


def test_the_stage_is_the_base_design_with_the_best_knobs(project):
    _write_best(project, KNOBS)
    params = load_params()
    tuned, base = params.tuned, params.improved
    assert tuned.model.filters == tuple(round(f * 0.5) for f in base.model.filters[:3])
    assert (tuned.train.lr, tuned.train.momentum, tuned.train.scheduler) == (
        0.02,
        0.9,
        "onecycle",
    )
    # the base's budget and everything no knob names
    assert (tuned.train.epochs, tuned.train.subset) == (base.train.epochs, base.train.subset)
    assert tuned.model.fc == base.model.fc and tuned.train.augment == base.train.augment


def test_a_tuned_section_in_params_yaml_is_refused(project):
    update_params(project, tuned={"model": {}, "train": {}})
    with pytest.raises(ConfigError) as info:
        load_params()
    assert info.value.key == "tuned" and "best_params.yaml" in info.value.message


def test_a_best_params_file_without_knobs_is_refused_naming_it(project):
    path = _write_best(project, {})
    path.write_text("improved.train.lr: 0.1\n")  # an older format: no `knobs:` mapping
    with pytest.raises(ConfigError, match="holds no `knobs:` mapping"):
        load_params()
    path.write_text(yaml.safe_dump({"knobs": {"colour": "red"}}))
    with pytest.raises(ConfigError, match=r"unknown knob\(s\) \['colour'\]"):
        load_params()


def test_without_a_study_the_stage_stops_before_work_naming_the_file(prepared, capsys):
    from pipelines import train

    with pytest.raises(SystemExit) as info:
        train.main(["tuned", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "best_params.yaml does not exist" in err and "python -m src.tune" in err
    assert "Traceback" not in err
    assert not (prepared / "models/tuned.pt").exists()


def test_the_stage_trains_and_records_the_searched_design(prepared):
    from pipelines import train

    _write_best(prepared, KNOBS)
    train.main(["tuned", "--no-progress"])
    metrics = json.loads((prepared / "reports/tuned/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    checkpoint = torch.load(prepared / "models/tuned.pt", weights_only=True)
    assert checkpoint["stage"] == "tuned"
    assert list(checkpoint["config"]["model"]["filters"]) == [2, 4, 4]  # 0.5 x (4, 8, 8)
    first_conv = checkpoint["model"]["0.weight"]
    assert first_conv.shape[0] == 2
