"""The driver of a training run: connect to (or start) Ray, build the datasets and the
TorchTrainer, fit, then write metrics.json and the loss-curve PNG into the run directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polymodal import storage
from polymodal.checkpoint import (
    fetch_checkpoint,
    init_weights,
    load_model,
    read_meta,
)
from polymodal.cluster import ensure_ray
from polymodal.config import Config, config_from_dict
from polymodal.data.dataset import dataset_manifest, dataset_path, preprocessing_for
from polymodal.data.format import Manifest
from polymodal.evaluation.evaluate import decoded_batches
from polymodal.evaluation.plots import plot_loss_curves, plot_reconstructions
from polymodal.modalities import Preprocessing
from polymodal.modalities.image import Augment
from polymodal.models.build import build_model
from polymodal.train.bad_rows import check_bad_fraction, write_bad_rows
from polymodal.train.features import cached_modalities
from polymodal.train.same_run import check_resume
from polymodal.train.tracking import tracking_env


@dataclass
class RunResult:
    run_dir: str
    checkpoint: str
    metrics: dict[str, float]
    epochs_run: int


def run_dir_of(cfg: Config) -> str:
    root = cfg.train.storage_path
    if "://" not in root:
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{cfg.train.name}"


@dataclass
class RunInputs:
    """What every trainer of a dataset needs: checkpoint meta, loop config, Ray datasets."""

    meta: dict[str, Any]
    loop_config: dict[str, Any]
    datasets: dict[str, Any]
    bad_rows: Any  # the BadRows actor counting rows that decoding dropped


def bad_row_totals(inputs: RunInputs) -> dict[str, Any]:
    import ray

    return ray.get(inputs.bad_rows.totals.remote())


def check_run(cfg: Config) -> tuple[Manifest, Preprocessing]:
    """The dataset's manifest, checked against the config, and its preprocessing; the model
    is built once, so one that cannot be built fails here, before Ray starts. No Ray: in a
    submitted job, the driver's working directory was gone once Ray had connected, and a
    library first imported after that (torchvision) failed in os.getcwd()
    (tests/integration/test_cluster.py); building the model here imports them in time."""
    manifest = dataset_manifest(cfg)
    for split in ("train", "val"):
        if manifest.rows(split) == 0:
            raise ValueError(f"{cfg.data.path}: split '{split}' is empty")
    if cfg.objective.weights.classification > 0 and not manifest.label_names:
        raise ValueError(
            f"{cfg.data.path}: objective.weights.classification > 0 but the dataset has no labels"
        )
    prep = preprocessing_for(cfg, manifest)
    model = build_model(cfg, prep, len(manifest.label_names or []))
    if cfg.train.init_from:  # workers load it again; a mismatch fails here, before Ray
        init_weights(model, cfg.train.init_from)
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    trained = sum(n for n, grad in sizes if grad)
    print(f"model: {sum(n for n, _ in sizes):,} parameters, {trained:,} trained", flush=True)
    return manifest, prep


def run_meta(cfg: Config, manifest: Manifest, prep: Preprocessing) -> dict[str, Any]:
    """Everything a checkpoint must carry; the loop adds epoch, step, metrics and history."""
    label_names = manifest.label_names
    return {
        "config": cfg.to_dict(),
        "preprocessing": prep.to_dict(),
        "label_names": label_names,
        "num_classes": len(label_names or []),
        "zero_shot_templates": cfg.eval.zero_shot_templates
        or manifest.extra.get("caption_templates", []),
        "dataset": dataset_path(cfg),
    }


def prepare_inputs(cfg: Config, manifest: Manifest, prep: Preprocessing) -> RunInputs:
    """Lazy Ray datasets for train (shuffled) and val, from check_run's results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from polymodal.data.pipeline import (
        BadRows,
        configure_ray_data,
        piece_reader,
        pieces,
        split_dataset,
    )

    configure_ray_data(cfg.data.stall_timeout_s)
    # On the driver's node, like Train's controller: a lost worker node must not take it.
    here = ray.get_runtime_context().get_node_id()
    pinned = NodeAffinitySchedulingStrategy(here, soft=False)
    bad_rows = BadRows.options(scheduling_strategy=pinned).remote()
    path = dataset_path(cfg)
    # Train workers read their own pieces of train (train/loop.py); val goes through Train.
    datasets = {
        "val": split_dataset(
            path,
            "val",
            prep,
            decode_batch_size=cfg.data.decode_batch_size,
            with_hashes=True,
            bad_rows=bad_rows,
            manifest=manifest,
        ),
    }
    train_reader = piece_reader(
        path,
        "train",
        prep,
        cfg.data.decode_batch_size,
        # Content hashes travel with training batches only when they define positives.
        with_hashes=cfg.objective.contrastive.positives == "text",
        bad_rows=bad_rows,
        manifest=manifest,
        augment=Augment.from_config(cfg.data.augment),
        # Row keys for the sample log and for the frozen towers' feature tables.
        with_samples=bool(cfg.train.sample_log_dir or cached_modalities(cfg)),
        ordered=True,
    )
    meta = run_meta(cfg, manifest, prep)
    loop_config = {
        "meta": meta,
        "train_rows": manifest.rows("train"),
        "train_pieces": pieces(path, manifest, "train"),
        "train_reader": train_reader,
        "val_rows": manifest.rows("val"),
        "bad_rows": bad_rows,
    }
    return RunInputs(meta, loop_config, datasets, bad_rows)


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

    loop_config = {
        **inputs.loop_config,
        "meta": {**inputs.meta, "config": cfg.to_dict()},
        "sweep": sweep,
        "tracking_env": tracking_env(),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
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


def ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0)


def check_cpus(cfg: Config, cluster_cpus: float) -> None:
    """Workers that hold every CPU leave none for reading and decoding data: the run would
    sit at "0 rows". Refused before it starts, with the numbers and the ways out."""
    workers = cfg.train.num_workers * cfg.train.cpus_per_worker
    if workers < cluster_cpus:
        return
    fit_in = (cluster_cpus - 1) / cfg.train.num_workers
    hint = f"train.cpus_per_worker={fit_in:.2g}, " if fit_in > 0 else ""
    raise ValueError(
        f"train.num_workers × train.cpus_per_worker = {cfg.train.num_workers} × "
        f"{cfg.train.cpus_per_worker:g} = {workers:g} CPUs, and the cluster has {cluster_cpus:g}: "
        "none would be left to read and decode data, and training would wait forever. Leave "
        f"at least one CPU free: {hint}fewer workers, or more nodes (on an autoscaling "
        "cluster, start them first)."
    )


def apply_storage(cfg: Config) -> None:
    s = cfg.storage
    storage.configure(s.endpoint_url, s.region, s.access_key_id, s.secret_access_key)


def fit(cfg: Config, address: str | None = None) -> RunResult:
    apply_storage(cfg)
    manifest, prep = check_run(cfg)
    check_resume(cfg, run_dir_of(cfg), run_meta(cfg, manifest, prep))
    ensure_ray(address, cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    check_cpus(cfg, ray_cpus())
    inputs = prepare_inputs(cfg, manifest, prep)
    run_dir = run_dir_of(cfg)
    storage_path, name = run_dir.rsplit("/", 1)
    try:
        result = build_trainer(cfg, inputs, storage_path, name).fit()
    except Exception:
        # Ray wraps the worker's error in its own; too many bad rows gets our plain message.
        totals = bad_row_totals(inputs)
        write_bad_rows(run_dir, totals)
        check_bad_fraction(totals, cfg.data.max_bad_fraction, inputs.meta["dataset"])
        raise
    write_bad_rows(run_dir, bad_row_totals(inputs))
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.train.name} finished without a checkpoint")
    checkpoint = storage.uri_of(result.checkpoint.path, run_dir)
    return_value = getattr(result, "return_value", None) or {}
    return finish_run(run_dir, checkpoint, return_value.get("epochs_run", 0))


def finish_run(run_dir: str, checkpoint: str, epochs_run: int) -> RunResult:
    """Write metrics.json, loss_curves.png and (with an image decoder) reconstructions.png
    into the run directory, local or s3://. The HTML report is the caller's to write."""
    local = fetch_checkpoint(checkpoint)
    meta = read_meta(local)
    metrics = meta["metrics"]
    summary: dict[str, Any] = {
        "checkpoint": checkpoint,
        "epoch": meta["epoch"],
        "step": meta["step"],
        **metrics,
    }
    storage.write_bytes(
        storage.join(run_dir, "metrics.json"), json.dumps(summary, indent=2).encode()
    )
    curves = storage.join(run_dir, "loss_curves.png")
    best_effort(curves, lambda: plot_loss_curves(meta["history"], curves))
    model, _ = load_model(local)
    prep = Preprocessing(**meta["preprocessing"])
    if "image" in model.decoders:
        pictures = storage.join(run_dir, "reconstructions.png")

        def reconstructions() -> None:
            manifest = dataset_manifest(config_from_dict(meta["config"]))
            batch = next(decoded_batches(meta["dataset"], "val", prep, 8, manifest))
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
