"""Hyperparameter search over the task-3 design space, every trial tracked in MLflow.

    python -m src.tune [--study-name NAME] [--storage PATH|URL] [--n-trials N] [--timeout S]
    python -m src.tune apply [--study-name NAME] [--run]

The space, per-trial budget, sampler and pruner live in params.yaml (`tune`). A trial is
the base stage's config (`tune.base`, normally `improved`) with the sampled knobs put in
and the budget applied; it trains through that stage's recipe (`src.training.recipe`)
and `fit`.
The objective is the trial's best validation accuracy; the test split never reaches
the trials. Every validation is reported to the pruner (step k = k-th validation).

Storage: a journal file (default `optuna/journal.log`, shared by processes on one
machine) or an RDB URL (`postgresql://...`, shared by machines). The same command with
the same study name continues the study; `--n-trials` is the study's total, shared by
all its workers. A trial whose worker died or was interrupted ends FAIL and is run
again once; a trial that crashes (NaN loss, a bad combination) ends FAIL with its
reason, and the search goes on.

MLflow (experiment `<common.experiment>-tune`): one parent run per study and a nested
run per trial. The best trial's config is written to
`reports/tune/<study>/best_params.yaml`; `python -m src.tune apply` prints (with
`--run`, runs) the `dvc exp run` command that retrains the base stage with it.

Modules: `space` (knobs, the `tune` config, a trial's config), `storage` (journal file or
RDB, worker locks, heartbeats), `trials` (worker liveness, failing and rerunning the
trials of dead workers, counting), `search` (the loop and its MLflow runs), `summary`
(trial lines, figures, counts, the best), `apply` (the best trial as params overrides),
`__main__` (the CLI).
"""

from __future__ import annotations

from src.tune.apply import apply_best, best_overrides, dvc_command, write_best_params
from src.tune.search import run_search
from src.tune.space import (
    FIELD_KNOBS,
    FILTER_KNOBS,
    KNOBS,
    NOT_DESIGN,
    BudgetConfig,
    KnobSpec,
    PrunerConfig,
    SamplerConfig,
    TuneConfig,
    conv_filters,
    hand_tuned_knobs,
    load_tune_config,
    suggest_knobs,
    trial_section,
)
from src.tune.storage import StudyStorage, TuneError, open_storage
from src.tune.trials import best_trial, trials_done
from src.workers import worker_alive, worker_id


def main(argv: list[str] | None = None) -> None:
    """`python -m src.tune` (the CLI in __main__.py, imported on call: imported with the
    package, `python -m src.tune` would warn that it is loaded twice)."""
    from src.tune.__main__ import main as cli

    cli(argv)


__all__ = [
    "FIELD_KNOBS",
    "FILTER_KNOBS",
    "KNOBS",
    "NOT_DESIGN",
    "BudgetConfig",
    "KnobSpec",
    "PrunerConfig",
    "SamplerConfig",
    "StudyStorage",
    "TuneConfig",
    "TuneError",
    "apply_best",
    "best_overrides",
    "best_trial",
    "conv_filters",
    "dvc_command",
    "hand_tuned_knobs",
    "load_tune_config",
    "main",
    "open_storage",
    "run_search",
    "suggest_knobs",
    "trial_section",
    "trials_done",
    "worker_alive",
    "worker_id",
    "write_best_params",
]
