"""The driver of a sweep: check the space, decode val once, run the trials with
ASHA (or FIFO) under a Tuner, resume an interrupted sweep of the same name, write results."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from polymodal.cluster import ensure_ray
from polymodal.config import Config, ConfigError
from polymodal.train.init_from import with_init_model
from polymodal.train.prepare import (
    RunInputs,
    check_resources,
    check_run,
    prepare_inputs,
    run_dir_of,
)
from polymodal.tune.report import SweepResult, write_results
from polymodal.tune.space import check_tune, search_space
from polymodal.tune.trial import run_trial

TRIAL_DRIVER_CPUS = 0.01  # a trial only drives its trainer, whose workers hold the CPUs


def trial_cpus(cfg: Config) -> float:
    return max(cfg.train.num_workers, 1) * cfg.train.cpus_per_worker + TRIAL_DRIVER_CPUS


def concurrent_trials(cfg: Config, cluster: dict[str, float], free: dict[str, float]) -> int:
    """tune.max_concurrent_trials, or as many trials as the free CPUs (and GPUs) hold; either
    way one CPU stays for reading and decoding data, which each trial's workers do (Ray
    resources cluster and free). A sweep that would leave less is refused with the numbers."""
    per_trial = trial_cpus(cfg)
    fit = int(max(cluster.get("CPU", 0) - 1, 0) // per_trial)
    wanted = cfg.tune.max_concurrent_trials
    if wanted > fit:
        raise ConfigError(
            f"tune.max_concurrent_trials={wanted} trials × {per_trial:g} CPUs would leave the "
            f"cluster's {cluster.get('CPU', 0):g} CPUs less than one to read and decode data: "
            f"at most {fit} fit (fewer trials or a smaller train.cpus_per_worker)"
        )
    if wanted > 0:
        return wanted
    n = int(max(free.get("CPU", 0) - 1, 0) // per_trial)
    if cfg.train.use_gpu:
        n = min(n, int(free.get("GPU", 0) // max(cfg.train.num_workers, 1)))
    return max(1, n)


def materialize(inputs: RunInputs) -> RunInputs:
    """Decode val once for all trials. Train is read by each trial's workers in their own
    order (data/order.py), which a shared materialized copy could not give."""
    val = inputs.datasets["val"].materialize()
    return RunInputs(inputs.loop, {"val": val})


def _asha(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler

    # Rungs are epochs: the loop reports once per epoch, with validation metrics.
    return ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.train.epochs,
        grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
        reduction_factor=cfg.tune.reduction_factor,
    )


def _fifo(cfg: Config):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _optuna(cfg: Config):
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("tune.searcher: optuna needs `pip install optuna`") from exc
    return OptunaSearch()


# tune.scheduler and tune.searcher → the Tune object (config.py declares the same names).
SCHEDULERS: dict[str, Callable[[Config], Any]] = {"asha": _asha, "fifo": _fifo}
SEARCHERS: dict[str, Callable[[Config], Any]] = {
    "random": lambda cfg: None,  # Tune's default: random sampling, grid values enumerated
    "optuna": _optuna,
}


def run_sweep(cfg: Config, address: str | None = None, progress: bool = True) -> SweepResult:
    from ray import tune

    check_tune(cfg)
    cfg.storage.apply()
    cfg = with_init_model(cfg)
    sources, prep = check_run(cfg)
    ensure_ray(address, trial_cpus(cfg) + 1)
    import ray

    check_resources(cfg)  # one trial alone
    concurrent = concurrent_trials(cfg, ray.cluster_resources(), ray.available_resources())
    sweep_dir = run_dir_of(cfg)
    storage_path, name = sweep_dir.rsplit("/", 1)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=cfg.to_dict(),
            inputs=materialize(prepare_inputs(cfg, sources, prep)),
            sweep_dir=sweep_dir,
        ),
        {"CPU": TRIAL_DRIVER_CPUS},
    )
    if tune.Tuner.can_restore(sweep_dir):
        print(f"resuming sweep {sweep_dir}: finished trials are kept", flush=True)
        tuner = tune.Tuner.restore(
            sweep_dir, trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric,
                mode=cfg.tune.mode,
                num_samples=cfg.tune.num_samples,
                scheduler=SCHEDULERS[cfg.tune.scheduler](cfg),
                search_alg=SEARCHERS[cfg.tune.searcher](cfg),
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, verbose=1 if progress else 0
            ),
        )
    # Tune's own Ctrl-C handler ends the sweep as if it had finished (exit 0, a "best" of
    # half-run trials); without it Ctrl-C stops it at once, and the state Tune saves as it
    # goes resumes it.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        print(f"\nstopping: the sweep is saved in {sweep_dir}; the same command resumes it")
        raise
    return write_results(results, cfg, sweep_dir)


def format_table(result: SweepResult) -> str:
    if not result.rows:
        return "no trials"
    cols = [c for c in result.rows[0] if c != "checkpoint"]
    cells = [[_fmt(r[c]) for c in cols] for r in result.rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
