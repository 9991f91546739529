"""The quick run as DVC sees it: profiles.quick as real `-S` params of a --temp experiment,
stages that list only the keys they read, plots with named axes, and where a --temp
experiment's outputs and MLflow runs go."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from src import quick
from src.config.layout import PROJECT_ROOT, project_root, repo_root
from src.config.load import load_params, load_raw
from src.config.overrides import exp_run_command
from src.config.stages import TRAINING_STAGES
from src.runtime.errors import ConfigError

DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
TRAINING = tuple(s.name for s in TRAINING_STAGES)


def test_the_quick_command_sets_every_profile_value_as_a_real_param(tmp_path):
    from dvc.utils.hydra import apply_overrides

    raw = load_raw(PROJECT_ROOT / "params.yaml")
    command = quick.quick_command(raw)
    assert command[:6] == ["dvc", "exp", "run", "--temp", "-n", "quick"]
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "-S"]
    assert [s.split("=")[0] for s in sets] == [f"++{k}" for k in raw["profiles"]["quick"]]
    # what DVC writes into the experiment's params.yaml is what the profile means
    copy = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", copy)
    apply_overrides(str(copy), sets)
    experiment = load_params(copy)
    assert experiment == dataclasses.replace(load_params(copy, profile="quick"), profile="full")
    assert experiment == dataclasses.replace(
        load_params(PROJECT_ROOT / "params.yaml", profile="quick"), profile="full"
    )
    assert experiment.resnet.weights == "none" and experiment.baseline.train.epochs == 2
    assert experiment.baseline.model == load_params(PROJECT_ROOT / "params.yaml").baseline.model


def test_quick_and_tune_apply_build_dvc_exp_run_in_one_place():
    from src.tune.apply import dvc_command

    overrides = {"improved.model.filters": [8, 16], "common.experiment": "a b", "x.on": True}
    sets = ["-S", "++improved.model.filters=[8,16]", "-S", "++common.experiment='a b'"]
    sets += ["-S", "++x.on=true"]
    assert exp_run_command("q", overrides, temp=True, extra=["-f"]) == [
        *("dvc", "exp", "run", "--temp", "-n", "q"),
        *sets,
        "-f",
    ]
    assert dvc_command("my study", overrides, "improved") == [
        *("dvc", "exp", "run", "-n", "tuned-my-study"),
        *sets,
        "improved",
    ]


def test_a_profile_key_params_yaml_lacks_is_named():
    raw = load_raw(PROJECT_ROOT / "params.yaml")
    raw["profiles"]["quick"]["improved.train.nesterov"] = True  # optional, not in the file
    with pytest.raises(ConfigError) as info:
        quick.quick_command(raw)
    assert info.value.key == "profiles.quick.improved.train.nesterov"


def test_a_profile_selector_in_params_yaml_is_refused(tmp_path):
    raw = load_raw(PROJECT_ROOT / "params.yaml")
    raw["profile"] = "quick"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="python -m src.quick") as info:
        load_params(path)
    assert info.value.key == "profile"


def test_print_shows_the_command_and_runs_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "src.quick", "--print", "--", "-f"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DVC_ROOT"},
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("dvc exp run --temp -n quick -S ") and line.endswith(" -f")
    assert "-S ++resnet.weights=none" in line
    assert "'++improved.model.filters=[16,32,64,128]'" in line


def test_a_relative_source_is_resolved_where_the_user_typed_it(tmp_path, monkeypatch):
    """The stages run in DVC's temporary copy: a relative $CIFAR10_SOURCE must reach them
    as the absolute path it names from the user's directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR10_SOURCE", "../shared/cifar10.tar.gz")
    quick.absolute_source()
    assert os.environ["CIFAR10_SOURCE"] == str(tmp_path.parent / "shared/cifar10.tar.gz")
    monkeypatch.setenv("CIFAR10_SOURCE", "official")
    quick.absolute_source()
    assert os.environ["CIFAR10_SOURCE"] == "official"


def test_every_smoke_stage_can_learn():
    """A smoke stage must tell a working stage from a broken one: random frozen
    EfficientNet blocks give features nothing learns from (chance, 0.1000), so the quick
    profile keeps lite's pip-installed ImageNet weights."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    quick_values = raw["profiles"]["quick"]
    assert "lite.weights" not in quick_values and raw["lite"]["weights"] == "imagenet"
    for stage in ("resnet", "lite"):  # random weights only where every frozen block is tiny
        if quick_values.get(f"{stage}.weights") == "none":
            assert raw[stage]["backbone"] == "resnet18"


# --------------------------------------------------------------------------- dvc.yaml


def test_stages_list_only_the_keys_they_read():
    derived = {"tuned": ({"improved"}, {"tune.base", "tune.study"})}  # base section, its keys
    for name in TRAINING:
        params = DVC_YAML["stages"][name]["params"]
        sections, tune_keys = derived.get(name, ({name}, set()))
        assert sections <= set(params) and tune_keys <= set(params)
        top = [p for p in params if p not in tune_keys]
        assert not [p for p in top if p.split(".")[0] in ("profile", "profiles", "tune")]
        assert "common" not in params  # not the whole section: only the keys it reads
        others = set(TRAINING) - sections
        assert not [p for p in top if p.split(".")[0] in others]
    raw = load_raw(PROJECT_ROOT / "params.yaml")
    for name, stage in DVC_YAML["stages"].items():
        for key in stage.get("params", []):
            node = raw
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} names missing param {key}"
                node = node[part]


def test_only_top_level_plots_and_each_names_its_axes():
    for name, stage in DVC_YAML["stages"].items():
        assert "plots" not in stage, f"stage {name}: a stage-level plot draws every column"
    for name in TRAINING:
        outs = [
            next(iter(o)) if isinstance(o, dict) else o for o in DVC_YAML["stages"][name]["outs"]
        ]
        assert f"reports/{name}/history.csv" in outs
    for entry in DVC_YAML["plots"]:
        (plot,) = entry.values()
        assert plot["x_label"] and plot["y_label"] and plot["title"]
        # curves against the step; the confusion matrix from each stage's predictions
        assert plot["x"] == "step" or plot.get("template") == "confusion"
        assert len(plot["y"]) == len(TRAINING)


def test_the_report_declares_what_it_reads():
    report = DVC_YAML["stages"]["report"]
    deps = set(report["deps"])
    assert {"reports/tune", "reports/discussion.md"} <= deps
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in report["outs"]}
    assert "reports/report.html" in outs
    for path in ("reports/tune/README.md", "reports/discussion.md"):
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path], cwd=PROJECT_ROOT, capture_output=True
        )
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT_ROOT)
        assert tracked.returncode == 0 or ignored.returncode == 1, path
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "reports/tune/some-study/best_params.yaml"], cwd=PROJECT_ROOT
    )
    assert ignored.returncode == 1  # a study's summary goes into git


# --------------------------------------------------------------------------- --temp runs


def test_a_temp_experiment_writes_its_copy_and_tracks_in_the_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabcd1234"
    (copy / ".dvc").mkdir(parents=True)
    (copy / "src").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(repo))  # what DVC sets there: the original repo
    monkeypatch.chdir(copy)  # ... while the stage runs in the copy
    assert project_root() == copy.resolve()
    assert repo_root() == repo.resolve()
    monkeypatch.chdir(copy / "src")
    assert project_root() == copy.resolve()

    from src.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.tracking_uri() == f"sqlite:///{repo.resolve()}/mlflow.db"

    monkeypatch.chdir(repo)  # an ordinary `dvc repro`: DVC_ROOT is the project
    assert project_root() == repo and repo_root() == repo.resolve()


# --------------------------------------------------------------------------- its output


def _toy_repo(root) -> None:
    """A DVC project whose committed lock has an output of a stage that never ran."""

    def run(*args):
        subprocess.run(args, cwd=root, check=True, capture_output=True)

    root.mkdir()
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (root / "params.yaml").write_text("n: 1\n")
    py = shlex.quote(sys.executable)
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  made:\n"
        f"    cmd: {py} -c \"open('made.txt', 'w').write('x')\"\n"
        "    params: [n]\n"
        "    outs: [made.txt]\n"
        "  later:\n"
        f"    cmd: {py} -c \"open('later.txt', 'w').write('y')\"\n"
        "    deps: [made.txt]\n"
        "    outs: [later.txt]\n"
    )
    (root / ".gitignore").write_text("/made.txt\n/later.txt\n")
    run(sys.executable, "-m", "dvc", "repro", "-q", "made")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")


def test_dvcs_warnings_about_outputs_no_stage_made_yet_are_dropped(tmp_path, capfd):
    root = tmp_path / "toy"
    _toy_repo(root)
    command = ["dvc", "exp", "run", "--temp", "-n", "one", "-S", "n=2"]
    plain = subprocess.run(
        [sys.executable, "-m", *command], cwd=root, capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    assert quick.MISSING_OUTPUT in plain.stdout + plain.stderr  # what a user saw
    capfd.readouterr()
    assert quick.run_dvc([*command[:-3], "two", "-S", "n=3"], cwd=root) == 0
    out, err = capfd.readouterr()
    assert "Ran experiment(s): two" in out + err
    assert quick.MISSING_OUTPUT not in out + err


def test_the_summary_says_where_the_report_runs_and_models_are(project, monkeypatch):
    import mlflow

    from src.config.load import load_params
    from src.tracking.runs import stage_run

    monkeypatch.setenv("DVC_EXP_NAME", "quick")
    params = load_params()
    for stage in ("baseline", "report"):
        with stage_run(stage, {"profile": "quick"}, system_metrics=False) as run:
            if stage == "report":
                run.log_text("# report", "report.html")
                report_id = run.run_id
            else:
                client = mlflow.MlflowClient()
                client.create_registered_model("cifar10-baseline")
                client.create_model_version(
                    "cifar10-baseline", "file:///x", run.run_id, tags={"smoke": "profile quick"}
                )
    monkeypatch.setenv("DVC_EXP_NAME", "other")
    with stage_run("baseline", {"profile": "full"}, system_metrics=False):
        pass  # another experiment's run: not listed
    text = "\n".join(quick.summary("quick"))
    exp_id = mlflow.MlflowClient().get_experiment_by_name(params.common.experiment).experiment_id
    html = project / "mlruns" / exp_id / report_id / "artifacts" / "report.html"
    assert html.is_file() and f"{html} (opens offline)" in text
    assert f"#/experiments/{exp_id}/runs/{report_id}/artifacts" in text
    assert "runs:    baseline (quick), report (quick)\n" in text
    assert f"`mlflow ui` in {project}" in text and "?workflowType=machine_learning" in text
    assert "models:/cifar10-baseline/1 (smoke: profile quick)" in text
