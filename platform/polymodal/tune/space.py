"""The `tune.space` section: config key -> sampler, checked against the config and turned into
Ray Tune domains; and the config of one trial from the sampled values."""

from __future__ import annotations

from typing import Any

from polymodal.config import Config, ConfigError, config_with

SAMPLERS = ("choice", "grid", "uniform", "loguniform")


def _spec(key: str, spec: Any) -> tuple[str, list]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"'tune.space.{key}' must be one of {{{' | '.join(SAMPLERS)}: [...]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in SAMPLERS:
        raise ConfigError(f"'tune.space.{key}': unknown sampler '{kind}' (one of {SAMPLERS})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"'tune.space.{key}.{kind}' needs a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform"):
        try:
            low, high = (float(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"'tune.space.{key}.{kind}' needs [low, high], got {args}") from None
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(f"'tune.space.{key}.{kind}': need 0 < low < high, got {args}")
        args = [low, high]
    return kind, args


def check_tune(cfg: Config) -> None:
    """Every searched key is a config key whose type its values fit (checked by building
    the config with the first value of each), and the sweep's settings are in range (their
    choices, e.g. tune.scheduler, were checked when the config was loaded)."""
    t = cfg.tune
    if not t.space:
        raise ConfigError("'tune.space' is empty: name at least one config key to search")
    if t.num_samples < 1 or t.grace_period < 1 or t.reduction_factor < 2:
        raise ConfigError(
            "'tune.num_samples' >= 1, 'tune.grace_period' >= 1, 'tune.reduction_factor' >= 2"
        )
    if not cfg.train.num_workers:
        raise ConfigError(
            "'train.num_workers: 0' (Train's local mode) does not run inside a Tune trial: "
            "Ray 2.60 refuses Train's calls there; give each trial 1 or more workers"
        )
    sample = {}
    for key, spec in t.space.items():
        if key.startswith(("data.", "tune.")):
            raise ConfigError(
                f"'tune.space.{key}': data.* and tune.* cannot be searched (every trial "
                "reads the same decoded dataset)"
            )
        kind, args = _spec(key, spec)
        if kind == "grid" and t.searcher == "optuna":
            raise ConfigError(f"'tune.space.{key}': grid is not supported by the optuna searcher")
        sample[key] = args[0]
    try:
        trial_config(cfg, sample)
    except ConfigError as exc:
        raise ConfigError(f"tune.space: {exc}") from None


def search_space(cfg: Config) -> dict[str, Any]:
    """Ray Tune domains keyed by the dotted config key."""
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda args: tune.uniform(*args),
        "loguniform": lambda args: tune.loguniform(*args),
    }
    out = {}
    for key, spec in cfg.tune.space.items():
        kind, args = _spec(key, spec)
        out[key] = make[kind](args)
    return out


def is_log_scale(cfg: Config, key: str) -> bool:
    return next(iter(cfg.tune.space[key])) == "loguniform"


def trial_config(base: Config, sampled: dict[str, Any]) -> Config:
    """base with each dotted key set to its sampled value (validated like any config)."""
    return config_with(base, sampled)
