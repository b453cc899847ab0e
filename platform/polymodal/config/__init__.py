"""Typed run configuration: pydantic sections (every choice a Literal, every field described)
loaded from YAML plus `key=value` overrides; every bad key, type, choice or combination is a
ConfigError naming the key and a fix. Imports no torch: config errors print before it loads.

schema.py: polymodal's own sections; assemble.py: the sections of the registered modalities
and objective terms; checks.py: cross-field rules; load.py: reading; reference.py: docs/config.md.
"""

from polymodal.config.assemble import config_class
from polymodal.config.errors import ConfigError
from polymodal.config.load import config_from_dict, config_with, load_config, parse_config
from polymodal.config.schema import Config, ObjectiveConfig, OptimConfig

__all__ = [
    "Config",
    "ConfigError",
    "ObjectiveConfig",
    "OptimConfig",
    "config_class",
    "config_from_dict",
    "config_with",
    "load_config",
    "parse_config",
]
