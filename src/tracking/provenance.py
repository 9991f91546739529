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
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from src.config.layout import project_root
from src.config.load import PARAMS_FILE
from src.config.profiles import matching_profile
from src.config.typed import flatten

# Git-tracked files that `dvc repro` itself rewrites while a pipeline runs (the lock after
# each stage, the metrics and history it keeps in git): a change there is the run's own
# output, not an edit of the code or params it ran, so it does not make the tree dirty.
DVC_WRITTEN = frozenset({"dvc.lock", "metrics.json", "history.csv", "predictions.csv"})
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


def profile_label(applied: str = "full", root: Path | None = None) -> str:
    """What a run's params are, by the rule in this module's docstring."""
    if applied != "full":
        return applied
    root = root or project_root()
    try:
        raw = _yaml((root / PARAMS_FILE).read_text()) or {}
    except OSError:
        raw = {}
    found = matching_profile(raw, raw.get("profiles") or {})
    if found:
        return found
    edited = [k for k in params_changed(root) if not k.startswith("profiles.")]
    return "custom" if edited else "full"
