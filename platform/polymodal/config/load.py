"""Reading a config: YAML plus `key=value` overrides, validated into the assembled Config with
every problem reported at once (types first, then the cross-field checks). Reads no storage."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from polymodal.config import checks
from polymodal.config.assemble import config_class
from polymodal.config.errors import ConfigError, error_message
from polymodal.config.schema import Config


def parse_config(tree: dict[str, Any]) -> Config:
    """The config a tree describes, its types checked (every problem at once) but not its
    cross-field rules: for reading what a checkpoint was trained with."""
    cls = config_class()
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError([error_message(cls, e) for e in exc.errors()]) from None


def check(cfg: Config, model_known: bool = True) -> Config:
    """cfg, or ConfigError with every cross-field problem; model_known False leaves out the
    checks that read the model section (see load_config)."""
    found = checks.problems(cfg, model_known)
    if found:
        raise ConfigError(found)
    return cfg


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=1` strings → (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=3)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {exc}") from exc
        pairs.append((key.strip(), value))
    return pairs


def _overridden(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    tree = copy.deepcopy(data)  # overrides must not reach the caller's sections
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    return tree


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    return check(parse_config(_overridden(data, overrides)))


def config_with(cfg: Config, values: dict[str, Any]) -> Config:
    """cfg with dotted keys set to values, checked like a loaded config."""
    tree = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return check(parse_config(tree))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: defaults) and apply `key=value` overrides. A config with
    train.init_from is checked without its model section, which comes from that checkpoint
    when the run is prepared (train/prepare.py:with_init_model, which checks it whole)."""
    data = read_yaml(path) if path is not None else {}
    try:
        cfg = parse_config(_overridden(data, overrides))
        return check(cfg, model_known=not cfg.train.init_from)
    except ConfigError as exc:
        raise exc.located(str(path)) if path is not None else exc from None
