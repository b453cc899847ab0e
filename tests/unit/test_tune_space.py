"""The tune: section is checked before any trial starts, with errors that name the key."""

from __future__ import annotations

import pytest

from polymodal.config import ConfigError, load_config
from polymodal.tune.space import check_tune, search_space, trial_config


def _cfg(space, *extra):
    cfg = load_config(None, list(extra))
    cfg.tune.space = space
    return cfg


def test_valid_space_becomes_tune_domains_and_trial_configs():
    cfg = _cfg(
        {
            "objective.weights.contrastive": {"loguniform": [0.1, 10]},
            "optim.lr": {"grid": [0.001, 0.003]},
            "objective.contrastive.gather": {"choice": ["local", "full"]},
        }
    )
    check_tune(cfg)
    space = search_space(cfg)
    assert space["optim.lr"] == {"grid_search": [0.001, 0.003]}
    assert space["objective.weights.contrastive"].lower == 0.1
    trial = trial_config(cfg, {"optim.lr": 0.003, "objective.contrastive.gather": "full"})
    assert trial.optim.lr == 0.003 and trial.objective.contrastive.gather == "full"
    assert cfg.optim.lr != 0.003  # the base config is untouched


@pytest.mark.parametrize(
    "space,extra,message",
    [
        ({}, [], "tune.space' is empty"),
        ({"objective.weights.contrastve": {"choice": [1.0]}}, [], "did you mean"),
        ({"optim.lr": {"normal": [0, 1]}}, [], "unknown sampler 'normal'"),
        ({"optim.lr": {"loguniform": [0.0, 1.0]}}, [], "0 < low < high"),
        ({"optim.lr": {"uniform": [1.0]}}, [], "needs [low, high]"),
        ({"optim.lr": [0.1, 0.2]}, [], "must be one of"),
        ({"data.image_size": {"choice": [8, 16]}}, [], "cannot be searched"),
        ({"optim.lr": {"grid": [0.1]}}, ["tune.searcher=optuna"], "not supported by the optuna"),
        ({"train.epochs": {"choice": ["many"]}}, [], "train.epochs"),
        ({"optim.lr": {"choice": [0.1]}}, ["tune.mode=maximum"], "tune.mode"),
        ({"optim.lr": {"choice": [0.1]}}, ["tune.scheduler=hyperband"], "tune.scheduler"),
        ({"optim.lr": {"choice": [0.1]}}, ["train.num_workers=0"], "inside a Tune trial"),
    ],
)
def test_bad_space_is_a_clear_error(space, extra, message):
    with pytest.raises(ConfigError) as err:
        check_tune(_cfg(space, *extra))
    assert message in str(err.value)


def test_weighting_is_checked_at_load():
    assert load_config(None, ["objective.weighting=uncertainty"]).objective.weighting
    with pytest.raises(ConfigError, match="did you mean 'uncertainty'"):
        load_config(None, ["objective.weighting=uncertainty2"])


def test_optuna_searcher_samples_the_space():
    from polymodal.tune.sweep import SEARCHERS

    cfg = _cfg(
        {
            "objective.weights.reconstruction": {"loguniform": [0.01, 3.0]},
            "objective.contrastive.temperature_init": {"choice": [0.03, 0.07]},
        },
        "tune.searcher=optuna",
    )
    check_tune(cfg)
    searcher = SEARCHERS[cfg.tune.searcher](cfg)
    assert searcher.set_search_properties(cfg.tune.metric, cfg.tune.mode, search_space(cfg))
    for i in range(5):
        sample = searcher.suggest(f"t{i}")
        assert 0.01 <= sample["objective.weights.reconstruction"] <= 3.0
        assert sample["objective.contrastive.temperature_init"] in (0.03, 0.07)
        trial_config(cfg, sample)  # every sample is a valid config


def test_concurrent_trials_leave_a_cpu_for_data():
    from polymodal.tune.sweep import concurrent_trials

    cfg = load_config(None, ["train.num_workers=1", "train.cpus_per_worker=0.5"])
    two = {"CPU": 2.0}
    assert concurrent_trials(cfg, two, two) == 1  # 1.51 CPUs would leave 0.49
    assert concurrent_trials(cfg, {"CPU": 4.0}, {"CPU": 4.0}) == 5  # (4 - 1) // 0.51
    cfg.tune.max_concurrent_trials = 2
    with pytest.raises(ConfigError, match="at most 1 fit"):
        concurrent_trials(cfg, two, two)
    cfg.train.cpus_per_worker = 0.45
    assert concurrent_trials(cfg, two, two) == 2
