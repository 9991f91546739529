"""Reading params.yaml: strict YAML, profiles, overrides, then the typed, checked Params.

The file must be UTF-8 YAML with no duplicate key and every required key
(src.config.schema); `load_params` builds the frozen Params from it, with a profile
(`profiles.<name>`) and dotted overrides put in, and `$CIFAR10_SOURCE` over `data.source`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from src.config.design import tuned_section
from src.config.layout import Layout, check_source, project_root
from src.config.schema import SOURCE_ENV_VAR, Params, TrainConfig, check_required
from src.config.typed import build
from src.runtime.errors import ConfigError

PARAMS_FILE = "params.yaml"
# Bounds on what params.yaml may be, checked before anything is expanded: the project's
# file is about 7 KB and 400 YAML nodes. An alias (`*name`) counts each time it is used,
# so a few KB of nested aliases (an "alias bomb") is refused instead of expanded.
MAX_PARAMS_BYTES = 1 << 20
MAX_PARAMS_NODES = 100_000


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(dotted, "override names a key that is not a section")
        node = child
    node[parts[-1]] = value


def profile_overrides(raw: dict, name: str) -> dict[str, Any]:
    """`profiles.<name>` of the raw params: dotted key -> value ({} for "full")."""
    profiles = raw.get("profiles") or {}
    if name == "full" and "full" not in profiles:
        return {}
    if name not in profiles:
        raise ConfigError("profiles", f"unknown profile {name!r}; defined: {sorted(profiles)}")
    overrides = profiles[name] or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"profiles.{name}", "expected a mapping of dotted keys to values")
    return dict(overrides)


def apply_profile(raw: dict, name: str) -> dict:
    """A copy of the raw params with profile `name`'s dotted overrides put in."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in profile_overrides(raw, name).items():
        _set_dotted(merged, dotted, value)
    return merged


def load_raw(path: str | Path | None = None) -> dict:
    """params.yaml as plain data. Bytes that are not UTF-8, YAML errors, a duplicate key
    (at any depth: YAML's last-one-wins would hide a value from its reader) and tabs are
    ConfigErrors naming the line."""
    import yaml  # optional at import time: the GPU machine may lack it

    path = Path(path) if path else project_root() / PARAMS_FILE
    if not path.is_file():
        raise ConfigError("", f"{path} not found")
    with path.open("rb") as fh:
        data = fh.read(MAX_PARAMS_BYTES + 1)
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(
            "", f"{path} is larger than MAX_PARAMS_BYTES ({MAX_PARAMS_BYTES} bytes); refused"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            "",
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save the file as UTF-8",
        ) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_node_count(node, path)
                _check_unique_keys(node, path)
            raw = (loader.construct_document(node) if node is not None else None) or {}
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
        raise ConfigError("", f"{where}: invalid YAML: {problem}{hint}") from None
    except yaml.reader.ReaderError as exc:  # a control character, say: one line, not YAML's
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            "", f"{path}:{line}: invalid YAML: {exc.reason} (#x{exc.character:04x})"
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("", f"{path}: invalid YAML: {first}") from None
    except RecursionError:
        raise ConfigError("", f"{path}: nested too deeply to be params; refused") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level")
    return raw


def _check_node_count(root: Any, path: Path) -> None:
    """ConfigError when the document, with every alias expanded, holds more than
    MAX_PARAMS_NODES nodes; counted without expanding anything, stopping at the limit."""
    import yaml

    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_PARAMS_NODES:
            raise ConfigError(
                "",
                f"{path}: more than MAX_PARAMS_NODES ({MAX_PARAMS_NODES}) values once its "
                "aliases (*name) are expanded; refused (an alias bomb?)",
            )
        if isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _check_unique_keys(node: Any, path: Path, prefix: str = "") -> None:
    """ConfigError naming a key a mapping holds twice (both lines), at any depth."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges defaults on purpose
            continue
        name = str(key_node.value)
        key = f"{prefix}.{name}" if prefix else name
        line = key_node.start_mark.line + 1
        if name in seen:
            raise ConfigError(
                key,
                f"set twice in {path} (lines {seen[name]} and {line}); YAML would keep "
                "only the last one: remove one",
            )
        seen[name] = line
        _check_unique_keys(value_node, path, key)


def load_params(
    path: str | Path | None = None, overrides: dict | None = None, profile: str = "full"
) -> Params:
    """Load and validate params.yaml, with profile `profile` (`profiles.<name>`) and then
    `overrides` (dotted keys; a "profile" entry there selects the profile) put in.

    Every required key must be in the file (:data:`OPTIONAL_KEYS` lists the others), and a
    local `data.source` must lie outside the folder the data stage replaces
    (:func:`check_source`). No stage passes a profile: what a stage trains with is what
    params.yaml (and so DVC) says.
    """
    raw = load_raw(path)
    check_required(raw)
    if "profile" in raw:
        raise ConfigError(
            "profile",
            "is not a params.yaml key: stages read only their own keys, so DVC records what "
            "ran; a profile is chosen by the command (`python -m src.quick`)",
        )
    if "tuned" in raw:
        raise ConfigError(
            "tuned",
            "is not a params.yaml section: the tuned stage is tune.base's design with the "
            "study's best knobs (reports/tune/<study>/best_params.yaml); edit those",
        )
    overrides = dict(overrides or {})
    profile = overrides.pop("profile", profile)
    raw = apply_profile(raw, profile)
    raw["profile"] = profile
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    raw["tuned"] = tuned_section(raw, Layout().tune_reports)
    params = build(Params, raw)
    source = os.environ.get(SOURCE_ENV_VAR)
    if source:
        params = dataclasses.replace(params, data=dataclasses.replace(params.data, source=source))
    check_source(params)
    Layout().check_inside()
    return params


def check_device(cfg: TrainConfig, key: str) -> None:
    """`device: cuda` without CUDA is a config error naming `key`.device, not a traceback."""
    if cfg.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}.device", "is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'"
        )
