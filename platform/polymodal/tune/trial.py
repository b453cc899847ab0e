"""One trial of a sweep: the sampled values applied to the sweep's config, then a full Ray
Train run whose per-epoch reports reach Tune, so that ASHA can stop it early."""

from __future__ import annotations

from typing import Any

from polymodal.config import config_from_dict
from polymodal.train.prepare import RunInputs
from polymodal.train.run import build_trainer
from polymodal.tune.space import trial_config


def epoch_reports():
    """Ray's TuneReportCallback for the reports at epoch ends only: a mid-epoch checkpoint's
    report has no validation metric (Tune refuses a result without its metric), and ASHA
    counts epochs."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if "mid_epoch" not in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


def run_trial(sampled: dict[str, Any], base: dict, inputs: RunInputs, sweep_dir: str) -> None:
    import ray.tune

    cfg = trial_config(config_from_dict(base), sampled)
    # Tune's table points at the checkpoint where the metric was best: it must stay.
    cfg.train.keep_best_metric, cfg.train.keep_best_mode = cfg.tune.metric, cfg.tune.mode
    # Named by the trial id: a resumed sweep restarts the trial's trainer under the same
    # name, and Ray Train continues from that run's last checkpoint.
    trainer = build_trainer(
        cfg,
        inputs,
        storage_path=f"{sweep_dir}/trials",
        name=ray.tune.get_context().get_trial_id(),
        callbacks=[epoch_reports()],
        sweep=sweep_dir.rstrip("/").rsplit("/", 1)[-1],
    )
    trainer.fit()
