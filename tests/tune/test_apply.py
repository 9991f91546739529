"""`python -m src.tune apply`: the best trial's knobs on params.yaml's own design, whatever
profile the study ran under, and a file that says which profile that was."""

from __future__ import annotations

import shlex
import shutil

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from src.config.design import knobs_into
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.config.schema import CNNStageConfig
from src.config.typed import build, to_dict
from src.tune.apply import write_best_params
from src.tune.space import BudgetConfig, trial_section


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
    assert "++improved.model.filters=[64,128,256,512]" in sets
    assert sorted(s.split("=")[0] for s in sets) == [
        "++improved.model.filters",
        "++improved.model.kernel_size",
        "++improved.train.lr",
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
    assert yaml.safe_load(text) == {"knobs": knobs}  # what the tuned stage reads
    tuned = load_params(PROJECT_ROOT / "params.yaml").improved
    tuned_raw = knobs_into(to_dict(tuned), yaml.safe_load(text)["knobs"])
    assert build(CNNStageConfig, tuned_raw) == retrained  # the stage trains what apply runs


def _hand_tuned_wins(storage=None) -> optuna.Study:
    """A study as search.py starts one (the hand-tuned design enqueued as trial 0), in
    which that trial scores best."""
    from src.tune.space import hand_tuned_knobs, load_tune_config, suggest_knobs

    params = load_params(PROJECT_ROOT / "params.yaml")
    space = load_tune_config(params).space
    study = optuna.create_study(study_name="hand", storage=storage, direction="maximize")
    study.set_user_attr("base", "improved")
    study.set_user_attr("profile", "full")
    values, _ = hand_tuned_knobs(params.improved, space)
    study.enqueue_trial(values, user_attrs={"hand_tuned": True})

    def objective(trial: optuna.Trial) -> float:
        suggest_knobs(trial, space)
        return 0.7 if trial.number == 0 else 0.5

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=2)
    return study


def test_apply_proposes_nothing_when_the_hand_tuned_design_wins(tmp_path):
    from src.tune.apply import best_overrides, design_config

    study = _hand_tuned_wins()
    best = study.best_trial
    assert best.number == 0
    # the trap: weight_decay 0 lies below the space's low end, so trial 0 ran with the
    # clipped 1e-06, which would read as a change to params.yaml
    assert best_overrides(design_config(best.params, "improved"), "improved") == {
        "improved.train.weight_decay": 1e-06
    }

    path, command = write_best_params(study, best, "improved", tmp_path)
    assert command == []
    text = path.read_text()
    assert "It is the hand-tuned design, params.yaml's own improved" in text
    assert "nothing to retrain" in text and "dvc exp run" not in text
    assert yaml.safe_load(text) == {"knobs": {}}  # the tuned stage trains improved's own

    # a rerun of it (same knobs, no hand_tuned attr: trials.retry keeps only retry_of)
    rerun = optuna.trial.create_trial(
        params=best.params,
        distributions=best.distributions,
        value=0.8,
        user_attrs={"retry_of": 0},
    )
    study.add_trial(rerun)
    _, command = write_best_params(study, study.best_trial, "improved", tmp_path)
    assert study.best_trial.number == 2 and command == []


def test_the_apply_command_says_the_hand_tuned_design_won(project, capsys):
    from src.tune.__main__ import main as tune_main
    from src.tune.storage import open_storage

    journal = project / "optuna" / "journal.log"
    journal.parent.mkdir()
    _hand_tuned_wins(open_storage(str(journal)).storage)
    tune_main(["apply", "--study-name", "hand", "--storage", str(journal), "--run"])
    out = capsys.readouterr().out
    assert "is the hand-tuned design: params.yaml's own improved design, nothing to apply" in out
    assert "dvc exp run" not in out
    assert (project / "reports/tune/hand/best_params.yaml").is_file()
