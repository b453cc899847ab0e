"""The driver's run preparation, before and as Ray starts: the dataset checked against the
config (completed from train.init_from: init_from.py), the run's RunMeta, and LoopInputs, what
every Train worker of the run gets (the one driver → worker contract)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from polymodal.checkpoint import RunMeta, init_weights
from polymodal.cluster import require
from polymodal.config import Config
from polymodal.data.dataset import dataset_manifest, dataset_path, preprocessing_for
from polymodal.data.format import Manifest
from polymodal.modalities import Preprocessing, augmentations
from polymodal.models.build import build_model
from polymodal.objectives import active_terms
from polymodal.train.features import cached_modalities


def run_dir_of(cfg: Config) -> str:
    root = cfg.train.storage_path
    if "://" not in root:
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{cfg.train.name}"


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
    for name, term in active_terms(cfg).items():
        if "labels" in term.data_needs(term.settings(cfg)) and not manifest.label_names:
            raise ValueError(
                f"{cfg.data.path}: objective.weights.{name} > 0 but the dataset has no labels"
            )
    prep = preprocessing_for(cfg, manifest)
    model = build_model(cfg, prep, len(manifest.label_names or []))
    if cfg.train.init_from:  # workers load it again; a mismatch fails here, before Ray
        init_weights(model, cfg.train.init_from)
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    trained = sum(n for n, grad in sizes if grad)
    print(f"model: {sum(n for n, _ in sizes):,} parameters, {trained:,} trained", flush=True)
    return manifest, prep


def run_meta(cfg: Config, manifest: Manifest, prep: Preprocessing) -> RunMeta:
    """Everything a checkpoint must carry; the loop adds epoch, step, metrics and history."""
    label_names = manifest.label_names
    return RunMeta(
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        label_names=label_names,
        num_classes=len(label_names or []),
        zero_shot_templates=cfg.eval.zero_shot_templates
        or manifest.extra.get("caption_templates", []),
        dataset=dataset_path(cfg),
    )


@dataclass(frozen=True)
class LoopInputs:
    """What every Train worker of a run gets from the driver (train_loop_config's "inputs"),
    read by train/loop.py's Recipe."""

    meta: RunMeta  # the run's checkpoint meta so far; its config is the run's
    train_rows: int
    train_pieces: list[dict[str, Any]]  # the train split's pieces (data/order.py deals them)
    train_reader: Any  # data.pipeline.PieceReader: decodes a rank's pieces
    val_rows: int
    bad_rows: Any  # the BadRows actor counting rows that decoding dropped
    sweep: str = ""  # the Tune sweep whose trial this is (trackers group by it)
    tracking_env: dict[str, str] = field(default_factory=dict)  # trackers' settings

    def for_run(self, cfg: Config, sweep: str, tracking_env: dict[str, str]) -> LoopInputs:
        """These inputs for a run of cfg (a sweep's trial: the sampled values)."""
        meta = self.meta.model_copy(update={"config": cfg.to_dict()})
        return dataclasses.replace(self, meta=meta, sweep=sweep, tracking_env=tracking_env)


@dataclass
class RunInputs:
    """What every trainer of a dataset needs: the workers' inputs and the Ray datasets."""

    loop: LoopInputs
    datasets: dict[str, Any]

    @property
    def bad_rows(self) -> Any:
        return self.loop.bad_rows


def prepare_inputs(cfg: Config, manifest: Manifest, prep: Preprocessing) -> RunInputs:
    """Lazy Ray datasets for train (shuffled) and val, from check_run's results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from polymodal.data.pipeline import (
        BadRowsActor,
        configure_ray_data,
        piece_reader,
        pieces,
        split_dataset,
    )

    configure_ray_data(cfg.data.stall_timeout_s)
    # On the driver's node, like Train's controller: a lost worker node must not take it.
    here = ray.get_runtime_context().get_node_id()
    pinned = NodeAffinitySchedulingStrategy(here, soft=False)
    bad_rows = BadRowsActor.options(scheduling_strategy=pinned).remote()
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
    needs = {n for t in active_terms(cfg).values() for n in t.data_needs(t.settings(cfg))}
    train_reader = piece_reader(
        path,
        "train",
        prep,
        cfg.data.decode_batch_size,
        # Content hashes travel with training batches only when a term reads them.
        with_hashes="hashes" in needs,
        bad_rows=bad_rows,
        manifest=manifest,
        augment=augmentations(cfg),
        # Row keys for the sample log and for the frozen towers' feature tables.
        with_samples=bool(cfg.train.sample_log_dir or cached_modalities(cfg)),
        ordered=True,
    )
    loop = LoopInputs(
        meta=run_meta(cfg, manifest, prep),
        train_rows=manifest.rows("train"),
        train_pieces=pieces(path, manifest, "train"),
        train_reader=train_reader,
        val_rows=manifest.rows("val"),
        bad_rows=bad_rows,
    )
    return RunInputs(loop, datasets)


def ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0)


def check_resources(cfg: Config) -> None:
    """What one run's workers need, checked against the cluster before Train asks for it:
    Train would wait for missing GPUs forever."""
    check_cpus(cfg, ray_cpus())
    if cfg.train.use_gpu:
        require(
            [{"GPU": 1.0}] * max(cfg.train.num_workers, 1),
            f"train.use_gpu=true with train.num_workers={cfg.train.num_workers}",
            "Set train.use_gpu=false, fewer workers, or add GPU nodes.",
            wait_s=cfg.train.resources_wait_s,
        )


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
