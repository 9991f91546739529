"""Hyperparameter search over the task-3 design space (Optuna), every trial tracked in MLflow.

Modules: `space` (knobs, the `tune` config, a trial's config), `storage` (journal file or
RDB, worker locks, heartbeats), `trials` (worker liveness, failing and rerunning the
trials of dead workers, counting), `search` (the loop and its MLflow runs), `summary`
(trial lines, figures, counts, the best), `apply` (the best trial as params overrides),
`__main__` (the CLI).
"""
