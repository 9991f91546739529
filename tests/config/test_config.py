"""params.yaml loads, validates every key, and matches what dvc.yaml names."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from src.config.layout import PROJECT_ROOT
from src.config.load import load_params, load_raw
from src.config.profiles import matching_profile, smoke_reasons
from src.config.schema import check_required, required_keys
from src.config.stages import TRAINING_STAGES
from src.config.typed import flatten, to_dict
from src.runtime.errors import ConfigError


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
            if isinstance(key, dict):  # {other_file: [keys]}: test_tuned_stage.py
                continue
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
        ("common.precision", "fp16", "common.precision"),
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
        [sys.executable, "-m", "pipelines.train", "baseline"],
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


# --------------------------------------------------------------------------- required keys


def _keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        if isinstance(value, dict) and key.split(".")[0] in DATACLASS_SECTIONS:
            keys += _keys(value, key)
    return keys


DATACLASS_SECTIONS = ("common", "data", *(s.name for s in TRAINING_STAGES))
PARAMS_RAW = load_raw(PROJECT_ROOT / "params.yaml")


def test_every_key_in_params_yaml_is_required():
    raw = load_raw(PROJECT_ROOT / "params.yaml")
    assert set(_keys(raw)) == set(required_keys())


@pytest.mark.parametrize("key", required_keys())
def test_a_missing_key_is_an_error_naming_it(key):
    raw = copy.deepcopy(PARAMS_RAW)
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[last]
    with pytest.raises(ConfigError, match="missing from params.yaml") as info:
        check_required(raw)  # what load_params runs first (test_a_missing_key_stops_...)
    assert info.value.key == key


# --------------------------------------------------------------------------- entry points


def _run(root, *module):
    return subprocess.run(
        [sys.executable, "-m", *module],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=_env(root),
        timeout=120,
    )


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _assert_config_error(proc, root, *expected):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (root / "mlruns").exists()  # no work started: not even a tracking run


def _drop(root, key):
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[last]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data", "../victim"),
        ("data", "VICTIM"),  # an absolute folder elsewhere
        ("data", "link/cifar10"),  # a symlink out of the project
        ("data", "mlruns"),
        ("data", "tests"),
        ("data", "."),
        ("data", ".git/cifar10"),
        ("models", "../victim"),
        ("reports", ".."),
        ("raw", "data/cifar10/raw"),
    ],
)
def test_a_path_param_is_refused_and_deletes_nothing(project, key, value):
    """The layout is fixed (not params): a params.yaml with a `common.paths` key stops the
    stage naming the key, whatever it points at, before anything is deleted."""
    from tests.conftest import update_params

    victim = project.parent / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    for folder in (".git", "mlruns", "tests"):
        (project / folder).mkdir()
        (project / folder / "keep.txt").write_text("keep me")
    (project / "link").symlink_to(victim)
    value = str(victim) if value == "VICTIM" else value
    update_params(project, **{"common.paths": {key: value}})  # not a params key
    before = _tree(project)
    proc = _run(project, "pipelines.download")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: params: 'common.paths': ")
    assert "unknown key" in lines[0] and "Traceback" not in proc.stderr
    assert _tree(project) == before
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data.source", "data/cifar10/c.tar.gz", ["'data.source'", "lies inside"]),
        ("data.source", "data/.cifar10.tmp-abcd1234/c.tar.gz", ["'data.source'", "lies inside"]),
        ("common.experiment", "  ", ["'common.experiment'", "must not be empty"]),
        ("data.split_seed", -1, ["'data.split_seed'", "must be >= 0"]),
    ],
)
def test_bad_values_stop_the_download_stage_before_reading(project, key, value, expected):
    from tests.conftest import update_params

    if key == "data.source":
        value = str(project / value)
    else:  # a source that does not exist: reading it would fail differently (exit 1)
        update_params(project, **{"data.source": str(project / "no-such-archive.tar.gz")})
    update_params(project, **{key: value})
    _assert_config_error(_run(project, "pipelines.download"), project, *expected)
    assert not (project / "data").exists()


def test_a_source_inside_a_symlinked_data_folder_is_refused(project, tmp_path):
    """The source check resolves symlinks: a data/ made a symlink (DVC would not record
    outs there, but the stage command alone writes on the target) is followed."""
    from tests.conftest import update_params

    elsewhere = tmp_path / "big-disk"
    (elsewhere / "cifar10").mkdir(parents=True)
    (project / "data").symlink_to(elsewhere)
    update_params(project, **{"data.source": str(elsewhere / "cifar10" / "c.tar.gz")})
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, "'data.source'", "lies inside")


def test_a_tab_in_params_yaml_names_line_and_column(project):
    path = project / "params.yaml"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("seed:"))
    lines[index] = "\t" + lines[index].lstrip()
    path.write_text("\n".join(lines) + "\n")
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, f"params.yaml:{index + 1}:1:", "not tabs")


def _edit_params(root, old: bytes, new: bytes) -> int:
    """Replace the first `old` in params.yaml by `new`; the 1-based line it is on."""
    path = root / "params.yaml"
    data = path.read_bytes()
    at = data.index(old)
    path.write_bytes(data[:at] + new + data[at + len(old) :])
    return data.count(b"\n", 0, at) + 1


def test_a_byte_that_is_not_utf8_names_line_and_offset(project):
    line = _edit_params(project, b"seed:", b"# caf\xe9\n  seed:")
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, f"params.yaml:{line}:", "not UTF-8", "0xe9")


def test_a_control_character_names_its_line(project):
    line = _edit_params(project, b"seed:", b"seed: \x01")
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, f"params.yaml:{line}:", "#x0001")


@pytest.mark.parametrize("depth", ["section", "nested key"])
def test_a_duplicate_key_names_it_and_both_lines(project, depth):
    text = (project / "params.yaml").read_text().splitlines()
    if depth == "section":
        first = text.index("common:") + 1
        second = len(text) + 1
        (project / "params.yaml").write_text("\n".join([*text, "common:", "  seed: 1"]) + "\n")
        key = "'common'"
    else:
        first = next(i for i, t in enumerate(text) if t.strip().startswith("lr:")) + 1
        second = first + 1
        text.insert(first, text[first - 1].replace(text[first - 1].split(":")[1], " 0.1"))
        (project / "params.yaml").write_text("\n".join(text) + "\n")
        key = "'baseline.train.lr'"
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, key, f"lines {first} and {second}", "set twice")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("common.seed", 99999999999999999999999, "out of range"),
        ("baseline.train.std", [float("inf"), 0.25, 0.25], "finite number > 0, got [inf"),
        ("improved.train.std", [0.25, float("nan"), 0.25], "finite number > 0, got [0.25, nan"),
        ("resnet.train.std", [0.2, 0.2, 0.0], "finite number > 0"),
        ("baseline.train.mean", [float("-inf"), 0.5, 0.5], "finite number, got [-inf"),
    ],
)
def test_out_of_range_and_non_finite_values_are_config_errors(project, key, value, expected):
    from tests.conftest import update_params

    update_params(project, **{key: value})
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, f"'{key}'", expected)
    assert not (project / "data").exists()


def test_a_missing_key_stops_the_download_stage(project):
    _drop(project, "improved.model.filters")
    _assert_config_error(
        _run(project, "pipelines.download"), project, "'improved.model.filters'", "missing"
    )


def test_a_class_left_without_validation_images_names_val_fraction(project):
    from tests.conftest import update_params

    update_params(project, **{"data.val_fraction": 0.01})  # 20 images a class: 0 for val
    proc = _run(project, "pipelines.download")
    _assert_config_error(proc, project, "'data.val_fraction'", "leaves 0 for validation")
    assert not (project / "data" / "cifar10").exists()


def test_a_missing_section_stops_training(project):
    _drop(project, "baseline")
    proc = _run(project, "pipelines.train", "baseline")
    _assert_config_error(proc, project, "'baseline': missing from params.yaml")


@pytest.mark.skipif(torch_has_cuda(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_config_error(project):
    from tests.conftest import update_params

    update_params(project, **{"baseline.train.device": "cuda"})
    proc = _run(project, "pipelines.train", "baseline")
    _assert_config_error(proc, project, "'baseline.train.device'", "no CUDA device")


def test_why_a_model_is_not_a_real_result():
    """One list of reasons, in the same words for the registry, predict and the report."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert smoke_reasons(to_dict(params.improved), params.profile) == []
    quick = load_params(PROJECT_ROOT / "params.yaml", overrides={"profile": "quick"})
    assert smoke_reasons(to_dict(quick.resnet), quick.profile) == [
        "profile quick",
        f"trained on {quick.resnet.train.subset:,} images",
        "random-init backbone",
    ]
    dry = {"train": {"dry_run": True, "subset": 12345}}
    assert smoke_reasons(dry) == ["dry run", "trained on 12,345 images"]
    assert smoke_reasons({}, "full") == []


def test_the_profile_a_config_holds():
    """Whole params match a profile by all its keys; a stage's section by its own keys."""
    profiles = {"full": {}, "quick": {"a.epochs": 1, "b.epochs": 2}, "tiny": {"a.epochs": 3}}
    assert matching_profile({"a": {"epochs": 1}, "b": {"epochs": 2}}, profiles) == "quick"
    assert matching_profile({"a": {"epochs": 1}, "b": {"epochs": 9}}, profiles) is None
    assert matching_profile({"a": {"epochs": 1}}, profiles, "a") == "quick"
    assert matching_profile({"a": {"epochs": 3}}, profiles, "a") == "tiny"
    assert matching_profile({"b": {"epochs": 2}}, profiles, "b") == "quick"
    assert matching_profile({"c": {"epochs": 1}}, profiles, "c") is None  # no key for `c`
