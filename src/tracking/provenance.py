"""What a run ran: the git commit, whether the code differs from it, which params differ
from the committed params.yaml, and which profile those params are.

`dvc exp run -S key=value` (the quick run, `src.tune apply --run`) writes its values
into params.yaml of the experiment's copy: that is the experiment's params, logged in
full with a params hash, not an edit of the code. So params.yaml never makes the tree
dirty; the tag `params_changed` lists the keys that differ from the commit, which shows
hand edits as well as `-S` values.

The profile a run is labelled with (its `profile` param, its run name):
1. the profile the process applied itself (`python -m src.tune --profile quick`);
2. else the first of params.yaml's `profiles` all of whose values the params hold
   (`python -m src.quick` sets exactly those with `-S`);
3. else `custom` when a param outside `profiles` differs from the committed params.yaml;
4. else `full`.

Why a model is not a real result (`smoke_reasons`: a profile's reduced values, a dry run,
a training subset, random-init weights) is said in the same words wherever it shows: the
registry's `smoke` tag (such a version is never `servable` nor `champion`), the default
model `src.predict` picks, and the report's banner and stage sections.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from src.config.layout import project_root
from src.config.load import PARAMS_FILE
from src.config.typed import flatten

# Git-tracked files that `dvc repro` itself rewrites while a pipeline runs (the lock after
# each stage, the metrics and history it keeps in git): a change there is the run's own
# output, not an edit of the code or params it ran, so it does not make the tree dirty.
DVC_WRITTEN = frozenset({"dvc.lock", "metrics.json", "history.csv"})
_MISSING = object()


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_info(root: Path | None = None) -> dict[str, str]:
    """The commit, and whether the code differs from it (`git_dirty`; params.yaml and
    what `dvc repro` writes aside: see `params_changed`)."""
    root = root or project_root()
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[2:].strip().split(" -> ")[-1] for line in status.splitlines()]
    dirty = [path for path in changed if Path(path).name not in DVC_WRITTEN and path != PARAMS_FILE]
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def _yaml(text: str | None) -> dict | None:
    import yaml

    try:
        raw = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None


def params_changed(root: Path | None = None) -> list[str]:
    """Dotted params keys whose value differs between params.yaml and the committed one
    (added and removed keys too); [] outside git or before the first commit."""
    root = root or project_root()
    committed = _yaml(_git(root, "show", f"HEAD:./{PARAMS_FILE}"))
    try:
        current = _yaml((root / PARAMS_FILE).read_text())
    except OSError:
        current = None
    if committed is None or current is None:
        return []
    now, then = flatten(current), flatten(committed)
    return sorted(
        k for k in now.keys() | then.keys() if now.get(k, _MISSING) != then.get(k, _MISSING)
    )


def _lookup(raw: dict, dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def matching_profile(raw: dict) -> str | None:
    """The first profile of `raw["profiles"]` (besides `full`) all of whose dotted values
    `raw` holds; None when there is none."""
    for name, overrides in (raw.get("profiles") or {}).items():
        if name == "full" or not isinstance(overrides, dict) or not overrides:
            continue
        if all(_lookup(raw, key) == value for key, value in overrides.items()):
            return name
    return None


def profile_label(applied: str = "full", root: Path | None = None) -> str:
    """What a run's params are, by the rule in this module's docstring."""
    if applied != "full":
        return applied
    root = root or project_root()
    try:
        raw = _yaml((root / PARAMS_FILE).read_text()) or {}
    except OSError:
        raw = {}
    found = matching_profile(raw)
    if found:
        return found
    edited = [k for k in params_changed(root) if not k.startswith("profiles.")]
    return "custom" if edited else "full"


def smoke_reasons(config: dict, profile: str | None = None) -> list[str]:
    """Why the model a stage's resolved config (its params.yaml section, as the model file
    stores it) trains is not a real result: not one to serve, not comparable with the
    course; [] for a full-budget model. `profile`: the params profile it ran under, when
    known (`full` or None: none)."""
    train = config.get("train") or {}
    reasons = []
    if profile and profile != "full":
        reasons.append(f"profile {profile}")
    if train.get("dry_run"):
        reasons.append("dry run")
    if train.get("subset"):
        reasons.append(f"trained on {train['subset']:,} images")
    if config.get("weights") == "none":
        reasons.append("random-init backbone")
    return reasons
