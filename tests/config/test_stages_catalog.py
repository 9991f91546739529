"""The stage catalog agrees with dvc.yaml and params.yaml."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from src.config.layout import PROJECT_ROOT
from src.config.schema import CNNStageConfig, Params, TransferConfig
from src.config.stages import STAGES, TRAINING_STAGES, get_stage
from src.runtime.errors import ConfigError
from src.tune.space import TuneConfig


def test_the_catalog_lists_dvc_yamls_stages_in_order():
    """Every stage but the figures stages, in order; each stage that writes numbers
    (download, training) has its figures stage."""
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    figures = [name for name in dvc if name.startswith("figures-")]
    assert [s.name for s in STAGES] == [name for name in dvc if name not in figures]
    drawn = [s.name for s in STAGES if s.name not in ("report",)]
    assert figures == [f"figures-{name}" for name in drawn]


def test_every_training_stage_has_its_params_section():
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for stage in TRAINING_STAGES:
        if stage.own_section:
            assert {"train"} <= set(params[stage.name]), stage.name
        else:  # derived (src.config.design), refused in the file
            assert stage.name not in params


def test_an_unknown_stage_names_the_known_ones():
    assert get_stage("improved").task == "3"
    with pytest.raises(KeyError, match="baseline, improved"):
        get_stage("vgg")


def test_params_has_one_section_per_training_stage_in_catalog_order():
    """Typed loading needs Params' fields spelled out; they must be the catalog's stages."""
    hints = typing.get_type_hints(Params)
    fields = dataclasses.fields(Params)
    sections = [f.name for f in fields if dataclasses.is_dataclass(hints[f.name])]
    assert sections[:2] == ["common", "data"]
    assert sections[2:] == [s.name for s in TRAINING_STAGES]
    section_type = {"cnn": CNNStageConfig, "transfer": TransferConfig}
    for stage in TRAINING_STAGES:
        assert hints[stage.name] is section_type[stage.kind], stage.name


def test_tuning_bases_are_the_catalogs_cnn_stages():
    with pytest.raises(ConfigError, match=r"expected one of \['baseline', 'improved'\]"):
        TuneConfig(base="resnet", space={"lr": {"kind": "float", "low": 0.01, "high": 0.1}})
