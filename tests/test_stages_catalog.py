"""The stage catalog agrees with dvc.yaml and params.yaml."""

from __future__ import annotations

import pytest
import yaml

from src.config.params import PROJECT_ROOT
from src.stages import STAGES, TRAINING_STAGES, get_stage


def test_the_catalog_lists_dvc_yamls_stages_in_order():
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert [s.name for s in STAGES] == list(dvc)


def test_every_training_stage_has_its_params_section():
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for stage in TRAINING_STAGES:
        assert {"train"} <= set(params[stage.name]), stage.name


def test_an_unknown_stage_names_the_known_ones():
    assert get_stage("improved").task == "3"
    with pytest.raises(KeyError, match="baseline, improved"):
        get_stage("vgg")
