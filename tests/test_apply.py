"""`python -m src.tune apply`: the best trial's knobs on params.yaml's own design, whatever
profile the study ran under, and a file that says which profile that was."""

from __future__ import annotations

import shlex
import shutil

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from src.config import PROJECT_ROOT, flatten, load_params, to_dict
from src.tune import BudgetConfig, trial_section
from src.tune.apply import write_best_params


def _quick_study(knobs: dict) -> optuna.Study:
    """A study run under the quick profile whose best trial has `knobs`, as search.py
    records it (user attrs: base, profile; the trial's config)."""
    study = optuna.create_study(study_name="cpu", direction="maximize")
    study.set_user_attr("base", "improved")
    study.set_user_attr("profile", "quick")
    quick = load_params(PROJECT_ROOT / "params.yaml", profile="quick").improved
    config = trial_section(quick, knobs, BudgetConfig(epochs=2, subset=5000))
    distributions = {
        "width": FloatDistribution(0.25, 1.0, log=True),
        "lr": FloatDistribution(0.005, 0.2, log=True),
        "kernel_size": CategoricalDistribution([3, 5, 7]),
    }
    study.add_trial(
        optuna.trial.create_trial(
            params=knobs,
            distributions=distributions,
            value=0.61,
            user_attrs={"config": to_dict(config)},
        )
    )
    return study


def test_a_quick_study_retrains_the_full_design_with_its_knobs(tmp_path):
    knobs = {"width": 0.5, "lr": 0.02, "kernel_size": 5}
    study = _quick_study(knobs)
    path, command = write_best_params(study, study.best_trial, "improved", tmp_path)

    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "-S"]
    assert command[:5] == ["dvc", "exp", "run", "-n", "tuned-cpu"] and command[-1] == "improved"
    # the full design's widths halved, not the quick profile's narrow network
    assert "improved.model.filters=[64,128,256,512]" in sets
    assert sorted(s.split("=")[0] for s in sets) == [
        "improved.model.filters",
        "improved.model.kernel_size",
        "improved.train.lr",
    ]  # no profile override (fc, subset, epochs) is carried over

    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", copy)
    apply_overrides(str(copy), sets)
    retrained = load_params(copy).improved
    full = load_params(PROJECT_ROOT / "params.yaml").improved
    assert retrained == trial_section(full, knobs, BudgetConfig())
    assert retrained.train.epochs == full.train.epochs and retrained.train.subset == 0
    assert retrained.model.fc == full.model.fc

    text = path.read_text()
    assert "params profile: quick" in text
    assert "scored after 2 epochs on 5000 training images" in text
    assert "Its knobs: width=0.5, lr=0.02, kernel_size=5." in text
    assert "the quick profile's improved network" in text
    assert shlex.join(command) in text
    assert yaml.safe_load(text) == {
        k: v
        for k, v in flatten(retrained, "improved").items()
        if k in {s.split("=")[0] for s in sets}
    }
