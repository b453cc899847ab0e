"""train.init_from: a run that starts from a checkpoint's weights takes that checkpoint's model
section, under the model keys its own config sets. Torch-free: `polymodal validate` uses it."""

from __future__ import annotations

from typing import Any

from polymodal import storage
from polymodal.config import Config, ConfigError, config_from_dict
from polymodal.run_meta import META, meta_of


def with_init_model(cfg: Config) -> Config:
    """With train.init_from, cfg whose model section is that checkpoint's under the model keys
    cfg sets itself (e.g. model.image.tuning: freeze): its weights need its architecture. The
    result is checked whole (load_config could not check the model section)."""
    source = cfg.train.init_from
    if not source:
        return cfg
    try:
        model = meta_of(source).run_config(checked=False).model
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"'train.init_from': {storage.join(source, META)}: not a readable checkpoint ({exc})"
        ) from None
    own = cfg.model.model_dump(exclude_unset=True)
    return config_from_dict({**cfg.model_dump(), "model": _merged(model.model_dump(), own)})


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out
