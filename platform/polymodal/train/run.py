"""The driver of a training run: prepare it (train/prepare.py), connect to (or start) Ray, build
the TorchTrainer, fit, then write metrics.json and the loss-curve PNG into the run directory."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polymodal import console, storage
from polymodal.checkpoint import fetch_checkpoint, load_model, read_meta
from polymodal.cluster import ensure_ray
from polymodal.config import Config
from polymodal.data.dataset import dataset_manifest
from polymodal.evaluation.evaluate import decoded_batches
from polymodal.evaluation.plots import plot_loss_curves, plot_reconstructions
from polymodal.train.bad_rows import check_bad_fraction, write_bad_rows
from polymodal.train.init_from import with_init_model
from polymodal.train.prepare import (
    RunInputs,
    check_resources,
    check_run,
    prepare_inputs,
    run_dir_of,
    run_meta,
)
from polymodal.train.same_run import check_resume
from polymodal.train.tracking import tracking_env


@dataclass
class RunResult:
    run_dir: str
    checkpoint: str
    metrics: dict[str, float]
    epochs_run: int


def bad_row_totals(inputs: RunInputs) -> dict[str, Any]:
    import ray

    return ray.get(inputs.bad_rows.totals.remote())


def build_trainer(
    cfg: Config,
    inputs: RunInputs,
    storage_path: str,
    name: str,
    callbacks: list | None = None,
    sweep: str = "",
):
    """A TorchTrainer for cfg; the same storage_path/name again resumes from its last
    checkpoint. sweep: the Tune sweep whose trial this is (trackers group by it)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from polymodal.train.loop import train_loop_per_worker

    loop = inputs.loop.for_run(cfg, sweep, tracking_env(), f"{storage_path}/{name}")
    return TorchTrainer(
        # The stubs mypy reads are Train v1's (None returned); Train v2, what ray.train gives at
        # run time, hands the return value back as Result.return_value (fit reads it).
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={"inputs": loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers_range(cfg),  # type: ignore[arg-type]  # v1 stubs; v2 takes a range
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=console.train_log_level()),  # type: ignore[call-arg]
            # Ray deletes the others (it must: a resumed run checks that every checkpoint it
            # registered still exists); by a metric, the best N are kept, the latest always.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=cfg.train.keep_best_metric or None,
                checkpoint_score_order=cfg.train.keep_best_mode,
            ),
            callbacks=callbacks,
        ),
        datasets=inputs.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # rank 0 reads val whole
    )


def workers_range(cfg: Config) -> int | tuple[int, int]:
    """Train's num_workers: a fixed count, or (elastic) the fewest and most workers."""
    t = cfg.train
    return (t.min_workers, t.num_workers) if 0 < t.min_workers < t.num_workers else t.num_workers


def fit(cfg: Config, address: str | None = None) -> RunResult:
    cfg.storage.apply()
    cfg = with_init_model(cfg)
    sources, prep = check_run(cfg)
    check_resume(cfg, run_dir_of(cfg), run_meta(cfg, sources, prep))
    keep_log(run_dir_of(cfg))
    ensure_ray(address, cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    check_resources(cfg)
    inputs = prepare_inputs(cfg, sources, prep)
    run_dir = run_dir_of(cfg)
    storage_path, name = run_dir.rsplit("/", 1)
    try:
        result = fit_interruptibly(build_trainer(cfg, inputs, storage_path, name), run_dir)
    except Exception:
        # Ray wraps the worker's error in its own; too many bad rows gets our plain message.
        totals = bad_row_totals(inputs)
        write_bad_rows(run_dir, totals)
        check_bad_fraction(totals, cfg.data.max_bad_fraction, inputs.loop.meta.dataset)
        raise
    write_bad_rows(run_dir, bad_row_totals(inputs))
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.train.name} finished without a checkpoint")
    checkpoint = storage.uri_of(result.checkpoint.path, run_dir)
    return_value = getattr(result, "return_value", None) or {}
    return finish_run(run_dir, checkpoint, return_value.get("epochs_run", 0))


def keep_log(run_dir: str) -> None:
    """Ray's lines kept off the terminal go to the run directory's logs/ (a local one), when
    this command starts Ray (console.quiet)."""
    import ray

    if console.verbose() or ray.is_initialized() or storage.is_remote(run_dir):
        return
    name = f"driver-{time.strftime('%Y%m%d-%H%M%S')}.log"
    console.use_log_file(os.path.join(run_dir, "logs", name))


def fit_interruptibly(trainer: Any, run_dir: str) -> Any:
    """trainer.fit() in a thread of its own, so that Ctrl-C stops the run at once: in the main
    thread, Train's own handler asks its controller to abort and waits for an answer that a
    controller blocked on starting its workers never gives. Leaving, the driver takes the
    actors it owns (the controller, and with it the workers) along."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print(f"\nstopping: checkpoints so far are in {run_dir}; the same command resumes")
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def finish_run(run_dir: str, checkpoint: str, epochs_run: int) -> RunResult:
    """Write metrics.json, loss_curves.png and (with an image decoder) reconstructions.png
    into the run directory, local or s3://. The HTML report is the caller's to write."""
    local = fetch_checkpoint(checkpoint)
    meta = read_meta(local)
    metrics = meta.metrics
    summary: dict[str, Any] = {
        "checkpoint": checkpoint,
        "epoch": meta.epoch,
        "step": meta.step,
        **metrics,
    }
    storage.write_bytes(
        storage.join(run_dir, "metrics.json"), json.dumps(summary, indent=2).encode()
    )
    curves = storage.join(run_dir, "loss_curves.png")
    best_effort(curves, lambda: plot_loss_curves(meta.history, curves))
    model, _ = load_model(local)
    if "image" in model.decoders:
        pictures = storage.join(run_dir, "reconstructions.png")

        def reconstructions() -> None:
            manifest = dataset_manifest(meta.run_config())
            batch = next(decoded_batches(meta.dataset, "val", meta.prep, 8, manifest))
            plot_reconstructions(model, batch, pictures)

        best_effort(pictures, reconstructions)
    return RunResult(run_dir, checkpoint, metrics, epochs_run)


def best_effort(path: str, write: Callable[[], Any]) -> bool:
    """Write a figure or report of a finished run; a failure is a warning naming the file,
    never a failed run (its checkpoint and metrics.json are already written)."""
    try:
        write()
        return True
    except Exception as exc:
        print(f"warning: could not write {path}: {type(exc).__name__}: {exc}", flush=True)
        return False
