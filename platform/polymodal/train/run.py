"""The driver of a training run: connect to (or start) Ray, build the datasets and the
TorchTrainer, fit, then write metrics.json and the loss-curve PNG into the run directory."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from polymodal import storage
from polymodal.config import Config, config_from_dict
from polymodal.data.decode import Augment, Preprocessing
from polymodal.data.format import Manifest, read_manifest
from polymodal.data.webdataset import is_webdataset_path, webdataset_manifest
from polymodal.evaluation.evaluate import decoded_batches
from polymodal.evaluation.plots import plot_loss_curves, plot_reconstructions
from polymodal.models.build import TEXT_TOKENIZERS
from polymodal.train.bad_rows import check_bad_fraction, write_bad_rows
from polymodal.train.checkpoint import fetch_checkpoint, load_model, read_meta

QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass
class RunResult:
    run_dir: str
    checkpoint: str
    metrics: dict[str, float]
    epochs_run: int


def ensure_ray(
    address: str | None = None, min_cpus: float = 1, metrics_port: int | None = None
) -> None:
    """Connect to `address` / RAY_ADDRESS, or start an embedded local cluster (with
    Prometheus /metrics on metrics_port, when given)."""
    import ray

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # S3 endpoint and region go along; keys must already be on the cluster's nodes. In a
        # submitted job, Ray refuses a variable that the job's runtime env already sets.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
        settings = {k: v for k, v in storage.public_settings().items() if k not in job_env}
        ray.init(address=address, runtime_env={"env_vars": settings} if settings else None)
        return
    # Logical CPUs: what the caller needs (training: one per worker plus one for Ray Data's
    # decoding). With only the physical count (2 here) workers take every CPU and reading
    # never starts.
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
        runtime_env={"env_vars": QUIET_ENV},
        _metrics_export_port=metrics_port,
    )


def dataset_manifest(cfg: Config) -> Manifest:
    """The manifest of cfg's dataset: written by ingest, or made up for webdataset tars."""
    if is_webdataset_path(cfg.data.path):
        return webdataset_manifest(
            dataset_path(cfg), cfg.data.val_path, tuple(cfg.data.label_names)
        )
    return read_manifest(cfg.data.path)


def dataset_path(cfg: Config) -> str:
    return cfg.data.path if "://" in cfg.data.path else os.path.abspath(cfg.data.path)


def preprocessing_for(cfg: Config, manifest) -> Preprocessing:
    """What turns the dataset's values into model inputs; for vectors, the train split's
    mean and std per feature (one pass over that column), kept in every checkpoint."""
    channels = cfg.data.image_channels or manifest.extra.get("image_channels", 1)
    mean, std = [], []
    if "vector" in cfg.model.modalities:
        from polymodal.data.format import open_shard, shard_paths
        from polymodal.data.vector import vector_stats

        paths = shard_paths(dataset_path(cfg), manifest, "train")
        mean, std = vector_stats(open_shard(p).read(columns=["vector"]).column(0) for p in paths)
    return Preprocessing(
        modalities=list(cfg.model.modalities),
        image_size=cfg.data.image_size,
        image_channels=channels,
        text_max_len=cfg.data.text_max_len,
        text_tokenizer=TEXT_TOKENIZERS.get(cfg.model.text.encoder, "bytes"),
        audio_rate=cfg.data.audio_rate,
        audio_seconds=cfg.data.audio_seconds,
        n_mels=cfg.data.n_mels,
        vector_mean=mean,
        vector_std=std,
    )


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


def prepare_inputs(cfg: Config) -> RunInputs:
    """Check the dataset against the config; lazy Ray datasets for train (shuffled) and val."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from polymodal.data.pipeline import BadRows, configure_ray_data, split_dataset

    manifest = dataset_manifest(cfg)
    for split in ("train", "val"):
        if manifest.rows(split) == 0:
            raise ValueError(f"{cfg.data.path}: split '{split}' is empty")
    if cfg.objective.weights.classification > 0 and not manifest.label_names:
        raise ValueError(
            f"{cfg.data.path}: objective.weights.classification > 0 but the dataset has no labels"
        )
    prep = preprocessing_for(cfg, manifest)
    label_names = manifest.label_names
    templates = cfg.eval.zero_shot_templates or manifest.extra.get("caption_templates", [])
    configure_ray_data()
    # On the driver's node, like Train's controller: a lost worker node must not take it.
    here = ray.get_runtime_context().get_node_id()
    pinned = NodeAffinitySchedulingStrategy(here, soft=False)
    bad_rows = BadRows.options(scheduling_strategy=pinned).remote()
    path, aug = dataset_path(cfg), cfg.data.augment
    datasets = {
        # Content hashes travel with training batches only when they define positives.
        "train": split_dataset(
            path,
            "train",
            prep,
            cfg.data.decode_batch_size,
            with_hashes=cfg.objective.contrastive.positives == "text",
            shuffle=True,
            bad_rows=bad_rows,
            manifest=manifest,
            augment=Augment(tuple(aug.crop_scale), tuple(aug.crop_ratio), aug.hflip),
            with_samples=bool(cfg.train.sample_log_dir),
        ),
        "val": split_dataset(
            path,
            "val",
            prep,
            cfg.data.decode_batch_size,
            with_hashes=True,
            bad_rows=bad_rows,
            manifest=manifest,
        ),
    }
    # Everything a checkpoint must carry; the loop adds epoch, step, metrics and history.
    meta = {
        "config": cfg.to_dict(),
        "preprocessing": prep.to_dict(),
        "label_names": label_names,
        "num_classes": len(label_names or []),
        "zero_shot_templates": templates,
        "dataset": path,
    }
    loop_config = {
        "meta": meta,
        "train_rows": manifest.rows("train"),
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
    checkpoint_score: tuple[str, str] | None = None,
):
    """A TorchTrainer for cfg; the same storage_path/name again resumes from its last
    checkpoint. checkpoint_score: (metric, mode) keeps the best checkpoints, not the last."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from polymodal.train.loop import train_loop_per_worker

    metric, mode = checkpoint_score or (None, "max")
    loop_config = {**inputs.loop_config, "meta": {**inputs.meta, "config": cfg.to_dict()}}
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
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=mode,
            ),
            callbacks=callbacks,
        ),
        datasets=inputs.datasets,
        # val is read whole by rank 0; only train is split across workers.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def apply_storage(cfg: Config) -> None:
    s = cfg.storage
    storage.configure(s.endpoint_url, s.region, s.access_key_id, s.secret_access_key)


def fit(cfg: Config, address: str | None = None) -> RunResult:
    apply_storage(cfg)
    ensure_ray(address, cfg.train.num_workers * cfg.train.cpus_per_worker + 1)
    inputs = prepare_inputs(cfg)
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
    """Write metrics.json, loss_curves.png, (with an image decoder) reconstructions.png and
    the HTML report (report/index.html) into the run directory, local or s3://."""
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
    plot_loss_curves(meta["history"], storage.join(run_dir, "loss_curves.png"))
    model, _ = load_model(local)
    prep = Preprocessing(**meta["preprocessing"])
    if "image" in model.decoders:
        manifest = dataset_manifest(config_from_dict(meta["config"]))
        batch = next(decoded_batches(meta["dataset"], "val", prep, 8, manifest))
        plot_reconstructions(model, batch, storage.join(run_dir, "reconstructions.png"))
    from polymodal.evaluation.report import write_report

    write_report(run_dir)
    return RunResult(run_dir, checkpoint, metrics, epochs_run)
