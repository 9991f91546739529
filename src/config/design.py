"""A CNN design as knob values, and the `tuned` stage's design.

The search (src.tune) samples knobs: `width` and `blocks` reshape `model.filters`, the
others set one field of a CNN stage's config. `apply_knobs` puts knob values into a
stage's config; the `tuned` stage is `tune.base`'s design with the committed study's best
knobs put in (reports/tune/<study>/best_params.yaml, `knobs:`), at the base's budget.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from src.config.stages import TUNABLE_STAGES
from src.runtime.errors import ConfigError

# Knobs that set one field of the base stage's config (its dotted path there).
FIELD_KNOBS = {
    "kernel_size": "model.kernel_size",
    "activation": "model.activation",
    "batch_norm": "model.batch_norm",
    "dropout": "model.dropout",
    "optimizer": "train.optimizer",
    "lr": "train.lr",
    "momentum": "train.momentum",
    "nesterov": "train.nesterov",
    "weight_decay": "train.weight_decay",
    "batch_size": "train.batch_size",
    "scheduler": "train.scheduler",
    "label_smoothing": "train.label_smoothing",
    "crop_padding": "train.augment.crop_padding",
    "hflip": "train.augment.hflip",
}
# Knobs that reshape `model.filters`: how many conv blocks, and a multiplier on widths.
FILTER_KNOBS = ("blocks", "width")
KNOBS = sorted([*FIELD_KNOBS, *FILTER_KNOBS])
BEST_PARAMS = "best_params.yaml"  # in reports/tune/<study>/


def conv_filters(base: tuple[int, ...], blocks: Any = None, width: Any = None) -> tuple[int, ...]:
    """The first `blocks` widths of `base` (doubling the last beyond it), times `width`."""
    filters = list(base)
    if blocks is not None:
        ok = isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1
        if not ok:
            message = f"blocks must be a whole number >= 1, got {blocks!r}"
            raise ConfigError("model.filters", message)
        extra = blocks - len(base)
        filters = filters[:blocks] + [base[-1] * 2**i for i in range(1, extra + 1)]
    if width is not None:
        ok = isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0
        if not ok:
            raise ConfigError("model.filters", f"width must be a number > 0, got {width!r}")
        filters = [max(1, round(f * width)) for f in filters]
    return tuple(filters)


def knobs_into(raw: dict, knobs: dict[str, Any]) -> dict:
    """A copy of a CNN stage's raw config (`to_dict` form) with the knob values put in."""
    raw = _copy(raw)
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ConfigError("knobs", f"unknown knob(s) {unknown}; expected some of {KNOBS}")
    if any(k in knobs for k in FILTER_KNOBS):
        base = tuple(raw["model"]["filters"])
        raw["model"]["filters"] = list(conv_filters(base, knobs.get("blocks"), knobs.get("width")))
    for knob, value in knobs.items():
        if knob in FIELD_KNOBS:
            *parents, last = FIELD_KNOBS[knob].split(".")
            node = raw
            for part in parents:
                node = node[part]
            node[last] = value
    return raw


def _copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_copy(v) for v in tree]
    return tree


def study_slug(name: str) -> str:
    """A study name fit for a directory and an experiment name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "study"


def best_params_file(tune_reports: Path, study: str) -> Path:
    return tune_reports / study_slug(study) / BEST_PARAMS


def read_best_knobs(path: Path) -> dict[str, Any] | None:
    """The `knobs:` mapping of a best_params.yaml; None when the file does not exist
    (no study has completed a trial). A file without a valid mapping is a ConfigError."""
    import yaml

    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("knobs", f"{path}: not readable YAML ({exc})") from None
    knobs = data.get("knobs") if isinstance(data, dict) else None
    if not isinstance(knobs, dict):
        raise ConfigError("knobs", f"{path} holds no `knobs:` mapping")
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ConfigError("knobs", f"{path}: unknown knob(s) {unknown}; expected some of {KNOBS}")
    return knobs


def tuned_section(raw: dict, tune_reports: Path) -> dict:
    """The `tuned` stage's raw config: `tune.base`'s (profile and overrides already in)
    with the best knobs of study `tune.study` put in; the base's own when no study has
    a best trial yet (the stage itself refuses to train then: `check_tuned_source`)."""
    base, study = _tune_keys(raw)
    if base not in TUNABLE_STAGES:
        raise ConfigError("tune.base", f"expected one of {list(TUNABLE_STAGES)}, got {base!r}")
    knobs = read_best_knobs(best_params_file(tune_reports, study)) or {}
    return knobs_into(raw[base], knobs)


def check_tuned_source(raw_tune: dict, tune_reports: Path) -> Path:
    """The best_params.yaml the `tuned` stage trains from; a ConfigError saying how to
    make it when there is none."""
    base, study = _tune_keys({"tune": raw_tune})
    path = best_params_file(tune_reports, study)
    if read_best_knobs(path) is None:
        raise ConfigError(
            "tune.study",
            f"the tuned stage trains study {study!r}'s best design, and {path} does not exist: "
            "run the search first (python -m src.tune), or name a study that has one",
        )
    return path


def _tune_keys(raw: dict) -> tuple[str, str]:
    tune = raw.get("tune") if isinstance(raw.get("tune"), dict) else {}
    for key in ("base", "study"):
        if not isinstance(tune.get(key), str) or not tune[key]:
            raise ConfigError(f"tune.{key}", "required: the tuned stage derives from it")
    return tune["base"], tune["study"]
