"""Params profiles and smoke runs: which profile a config holds, and why a config trains no
real result.

Why a model is not a real result (`smoke_reasons`: a profile's reduced values, a dry run,
a training subset, random-init weights) is said in the same words wherever it shows: the
registry's `smoke` tag (such a version is never `servable` nor `champion`), the default
model `src.predict` picks, and the report's banner and stage sections.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def _lookup(raw: dict, dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def matching_profile(params: dict, profiles: dict, stage: str | None = None) -> str | None:
    """The first of `profiles` (`profiles` of params.yaml; `full` aside) all of whose
    dotted values the raw `params` hold; None when there is none. With `stage`, only a
    profile's keys under `<stage>.` count (one with none there does not match): `params`
    need hold that stage's section only."""
    for name, overrides in profiles.items():
        if name == "full" or not isinstance(overrides, dict):
            continue
        keys = {k: v for k, v in overrides.items() if stage is None or k.startswith(f"{stage}.")}
        if keys and all(_lookup(params, k) == v for k, v in keys.items()):
            return name
    return None


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
