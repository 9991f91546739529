"""params.yaml loads, validates every key, and matches what dvc.yaml names."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from src.config import PROJECT_ROOT, ConfigError, flatten, load_params, load_raw, to_dict


def test_params_yaml_loads_and_matches_the_course_recipe():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.baseline.model.filters == (32, 64, 128)
    assert params.baseline.train.lr == 0.05 and params.baseline.train.batch_size == 64
    assert params.improved.model.filters == (128, 256, 512, 1024)
    assert params.resnet.train.optimizer == "adam" and params.resnet.train.batch_size == 32
    assert params.data.val_fraction == 0.1


def test_quick_profile_loads_and_validates():
    params = load_params(PROJECT_ROOT / "params.yaml", overrides={"profile": "quick"})
    assert params.resnet.weights == "none"
    assert params.baseline.train.subset > 0
    # the baseline's recipe is untouched by the profile, only its budget
    assert params.baseline.model == load_params(PROJECT_ROOT / "params.yaml").baseline.model


def test_every_dvc_param_key_exists():
    raw = load_raw(PROJECT_ROOT / "params.yaml")
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            node = raw
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} names missing param {key}"
                node = node[part]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("improved.train.lr", -0.1, "improved.train.lr"),
        ("data.val_fraction", 1.5, "data.val_fraction"),
        ("improved.model.kernel_size", 4, "improved.model.kernel_size"),
        ("baseline.train.batch_size", "64", "baseline.train.batch_size"),
        ("baseline.model.activation", "tanhh", "baseline.model.activation"),
        ("baseline.train.augment.hflip", "yes", "baseline.train.augment.hflip"),
        ("baseline.train.bogus", 1, "baseline.train.bogus"),
        ("resnet.trainable", ["layer9", "fc"], "resnet.trainable"),
        ("baseline.model.filters", [32, 64, 128, 256, 512, 1024], "baseline.model.filters"),
        ("common.seed", 1.5, "common.seed"),
    ],
)
def test_bad_values_name_their_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        load_params(PROJECT_ROOT / "params.yaml", overrides={key: value})
    assert info.value.key == expected
    assert expected in str(info.value)


def test_unknown_section_and_profile_are_rejected():
    with pytest.raises(ConfigError, match="'trian'"):
        load_params(PROJECT_ROOT / "params.yaml", overrides={"trian": {}})
    with pytest.raises(ConfigError, match="unknown profile"):
        load_params(PROJECT_ROOT / "params.yaml", overrides={"profile": "nope"})


def test_source_env_var_overrides(monkeypatch):
    monkeypatch.setenv("CIFAR10_SOURCE", "/somewhere/cifar.tar.gz")
    assert load_params(PROJECT_ROOT / "params.yaml").data.source == "/somewhere/cifar.tar.gz"


def test_flatten_and_to_dict_roundtrip_values():
    params = load_params(PROJECT_ROOT / "params.yaml")
    flat = flatten(params.baseline, "baseline")
    assert flat["baseline.train.lr"] == 0.05
    assert flat["baseline.model.filters"] == [32, 64, 128]
    assert to_dict(params)["improved"]["train"]["augment"] == {"crop_padding": 4, "hflip": True}


def test_bad_params_exit_2_before_any_work(project):
    from tests.conftest import update_params

    update_params(project, **{"baseline.train.lr": -1})
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train_cnn", "baseline"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=_env(project),
    )
    assert proc.returncode == 2
    assert "baseline.train.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / "mlruns").exists()


def _env(root):
    import os

    return {**os.environ, "DVC_ROOT": str(root)}
