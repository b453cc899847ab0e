"""The driver's run preparation, before and as Ray starts: the dataset checked against the
config (completed from train.init_from: init_from.py), the run's RunMeta, and LoopInputs, what
every Train worker of the run gets (the one driver → worker contract)."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from polymodal import cluster
from polymodal.checkpoint import RunMeta, init_weights
from polymodal.config import Config
from polymodal.data.dataset import (
    DataSource,
    data_sources,
    dataset_path,
    mixed_manifest,
    sources_preprocessing,
)
from polymodal.data.decode import decoded_row_bytes
from polymodal.data.format import is_webdataset, negatives_sizes
from polymodal.data.order import mixture_rows
from polymodal.modalities import Preprocessing, augmentations
from polymodal.models.build import build_model
from polymodal.objectives import TERMS, active_terms
from polymodal.train.features import cached_modalities
from polymodal.train.references import check_references, embed_references, reference_checkpoints


def run_dir_of(cfg: Config) -> str:
    root = cfg.train.storage_path
    if "://" not in root:
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{cfg.train.name}"


def check_run(cfg: Config) -> tuple[list[DataSource], Preprocessing]:
    """The datasets (data.path, or data.sources), checked against the config, and their
    preprocessing; the model is built once, so one that cannot be built fails here, before
    Ray starts. No Ray: in a submitted job, the driver's working directory was gone once Ray
    had connected, and a library first imported after that (torchvision) failed in
    os.getcwd() (tests/integration/test_cluster.py); building the model here imports them in
    time."""
    sources = data_sources(cfg)
    for s in sources:
        for split in ("train", "val") if s.weight > 0 else ("val",):
            if s.manifest.rows(split) == 0:
                raise ValueError(f"{s.path}: split '{split}' is empty")
    if not any(s.weight > 0 for s in sources):
        raise ValueError("data.sources: every weight is 0 (validation only): nothing to train on")
    # A validation-only source (weight 0) binds nothing: training never reads it.
    check_modalities(cfg.model.modalities, [s for s in sources if s.weight > 0])
    if cfg.data.mix == "batches" and len(sources) > 1:
        check_batches(cfg, sources)
    if len(sources) > 1 and cached_modalities(cfg):
        raise ValueError(
            "data.sources: frozen towers' feature tables (train.cache_frozen_features) read one "
            "dataset; train several without them"
        )
    check_references(cfg, sources)
    per_worker = cfg.train.batch_size // max(cfg.train.num_workers, 1)
    mined = [k for s in sources for k in negatives_sizes(s.manifest, cfg.model.modalities)]
    if mined and 0 < cfg.train.grad_cache.chunk_size < per_worker:
        raise ValueError(
            f"train.grad_cache.chunk_size={cfg.train.grad_cache.chunk_size}: the gradient cache "
            f"does not take explicit negatives yet, and the data has mined {mined}; set it to 0 "
            "(DDP or FSDP take them) or train on the dataset they were mined from"
        )
    manifest = mixed_manifest(sources)
    for name, term in active_terms(cfg).items():
        if "labels" in term.data_needs(term.settings(cfg)) and not manifest.label_names:
            raise ValueError(
                f"{sources[0].path}: objective.weights.{name} > 0 but no dataset has labels"
            )
    prep = sources_preprocessing(cfg, sources)
    model = build_model(cfg, prep, len(manifest.label_names or []))
    if cfg.train.init_from:  # workers load it again; a mismatch fails here, before Ray
        init_weights(model, cfg.train.init_from)
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    trained = sum(n for n, grad in sizes if grad)
    print(f"model: {sum(n for n, _ in sizes):,} parameters, {trained:,} trained", flush=True)
    return sources, prep


def check_modalities(modalities: list[str], sources: list[DataSource]) -> None:
    """Every model modality is in some source, and, with several sources, is bound to the
    others: pairs that share a source link modalities, and they must link all of them."""
    held = {m for s in sources for m in s.manifest.modalities}
    missing = [m for m in modalities if m not in held]
    if missing:
        where = ", ".join(f"{s.name}: {list(s.manifest.modalities)}" for s in sources)
        raise ValueError(f"model.modalities {missing}: no dataset has them ({where})")
    if len(sources) == 1:
        return
    bound = {modalities[0]}
    grown = True
    while grown:  # modalities reachable from the first through sources that pair them
        shared = [set(s.manifest.modalities) & set(modalities) for s in sources]
        grown = False
        for mods in shared:
            if mods & bound and not mods <= bound:
                bound |= mods
                grown = True
    if len(bound) < len(modalities):
        apart = sorted(set(modalities) - bound)
        raise ValueError(
            f"data.sources: {apart} share no source with {sorted(bound)}: no pair links "
            "them, so their embeddings would not be comparable; add a source that holds one "
            "of each"
        )


def check_batches(cfg: Config, sources: list[DataSource]) -> None:
    """data.mix: batches plans whole batches of each source: it needs their row counts (tars
    have none), every source at least one batch an epoch, and names no term's loss has."""
    world = max(cfg.train.num_workers, 1)
    per_rank = cfg.train.batch_size // world
    for k, s in enumerate(sources):
        where = f"data.sources[{k}] '{s.name}'"
        if s.weight == 0:  # validation only: no batches to plan
            continue
        if is_webdataset(s.manifest):
            raise ValueError(
                f"{where}: data.mix=batches plans whole batches from row counts, which "
                "webdataset tars do not have; use data.mix=rows or ingest it"
            )
        rows = int(s.weight * s.manifest.rows("train"))
        if rows // world < per_rank:
            raise ValueError(
                f"{where}: its {rows} weighted train rows make no whole batch of "
                f"train.batch_size={cfg.train.batch_size} over {world} workers, so it would "
                "never train; raise its weight, lower train.batch_size, or use data.mix=rows"
            )
        if s.name in TERMS:
            raise ValueError(
                f"{where}: train/loss/{s.name} is the {s.name} term's loss already; name the "
                "source otherwise"
            )


def run_meta(cfg: Config, sources: list[DataSource], prep: Preprocessing) -> RunMeta:
    """Everything a checkpoint must carry; the loop adds epoch, step, metrics and history."""
    manifest = mixed_manifest(sources)
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
    train_rows: int  # an epoch's, as the sources' weights make it (data/order.py)
    train_pieces: list[list[dict[str, Any]]]  # each source's train pieces (data/order.py)
    weights: list[float]  # each source's
    train_reader: Any  # data.pipeline.SourceReaders: decodes a rank's pieces
    val_rows: int
    bad_rows: Any  # the BadRows actor counting rows that decoding dropped
    # role -> object ref of a frozen reference model's embeddings (train/references.py)
    references: dict[str, Any] = field(default_factory=dict)
    sweep: str = ""  # the Tune sweep whose trial this is (trackers group by it)
    tracking_env: dict[str, str] = field(default_factory=dict)  # trackers' settings
    progress: bool = False  # rank 0 draws a progress bar (train/progress.py)
    run_dir: str = ""  # the run's directory, for Train's local mode (no storage context)

    def for_run(
        self, cfg: Config, sweep: str, tracking_env: dict[str, str], run_dir: str
    ) -> LoopInputs:
        """These inputs for a run of cfg (a sweep's trial: the sampled values). A run, not a
        sweep's trials, shows a progress bar when its driver is on a terminal."""
        meta = self.meta.model_copy(update={"config": cfg.to_dict()})
        progress = not sweep and sys.stderr.isatty()
        return dataclasses.replace(
            self,
            meta=meta,
            sweep=sweep,
            tracking_env=tracking_env,
            progress=progress,
            run_dir=run_dir,
        )


@dataclass
class RunInputs:
    """What every trainer of a dataset needs: the workers' inputs and the Ray datasets."""

    loop: LoopInputs
    datasets: dict[str, Any]

    @property
    def bad_rows(self) -> Any:
        return self.loop.bad_rows


def prepare_inputs(cfg: Config, sources: list[DataSource], prep: Preprocessing) -> RunInputs:
    """Lazy Ray datasets for val (every source's), and each source's train pieces and reader,
    from check_run's results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from polymodal.data.pipeline import (
        BadRowsActor,
        SourceReaders,
        configure_ray_data,
        piece_reader,
        pieces,
        pieces_dataset,
    )

    configure_ray_data(cfg.data.stall_timeout_s)
    # On the driver's node, like Train's controller: a lost worker node must not take it.
    here = ray.get_runtime_context().get_node_id()
    pinned = NodeAffinitySchedulingStrategy(here, soft=False)
    bad_rows = BadRowsActor.options(scheduling_strategy=pinned).remote()
    needs = {n for t in active_terms(cfg).values() for n in t.data_needs(t.settings(cfg))}

    def readers(split: str, **kwargs: Any) -> SourceReaders:
        return SourceReaders(
            [
                piece_reader(
                    s.path,
                    split,
                    prep,
                    cfg.data.decode_batch_size,
                    bad_rows=bad_rows,
                    manifest=s.manifest,
                    source=s.name if len(sources) > 1 else "",
                    **kwargs,
                )
                for s in sources
            ]
        )

    # Train workers read their own pieces of train (train/loop.py); val goes through Train,
    # in storage order, source after source.
    val_pieces = [
        {**p, "source": k} for k, s in enumerate(sources) for p in pieces(s.path, s.manifest, "val")
    ]
    datasets = {"val": pieces_dataset(val_pieces, readers("val", with_hashes=True))}
    train_pieces = [pieces(s.path, s.manifest, "train") for s in sources]
    mined = any(negatives_sizes(s.manifest, cfg.model.modalities) for s in sources)
    cached_negatives = mined and bool(cached_modalities(cfg))
    weights = [s.weight for s in sources]
    train_reader = readers(
        "train",
        cache_dir=decode_cache_dir(cfg, sources, prep),
        # Content hashes travel with training batches only when a term, a reference model
        # or frozen features of mined negatives (both looked up by them) read them.
        with_hashes="hashes" in needs or bool(reference_checkpoints(cfg)) or cached_negatives,
        augment=augmentations(cfg),
        # Row keys for the sample log and for the frozen towers' feature tables.
        with_samples=bool(cfg.train.sample_log_dir or cached_modalities(cfg)),
        ordered=True,
    )
    loop = LoopInputs(
        meta=run_meta(cfg, sources, prep),
        train_rows=mixture_rows(train_pieces, weights),
        train_pieces=train_pieces,
        weights=weights,
        train_reader=train_reader,
        val_rows=sum(s.manifest.rows("val") for s in sources),
        bad_rows=bad_rows,
        references=embed_references(cfg, sources, actors=max(1, int(ray_cpus()) - 1)),
    )
    return RunInputs(loop, datasets)


def decode_cache_dir(cfg: Config, sources: list[DataSource], prep: Preprocessing) -> str | None:
    """data.decode_cache_dir when every source's decoded train rows fit data.decode_cache_mb
    together, else None (decoded every epoch)."""
    size = sum(
        s.manifest.rows("train")
        * decoded_row_bytes(prep, negatives_sizes(s.manifest, prep.modalities))
        for s in sources
    )
    fits = 0 < size <= cfg.data.decode_cache_mb * 2**20
    return cfg.data.decode_cache_dir if fits else None


def ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0)


def check_resources(cfg: Config) -> None:
    """What one run's workers need (elastic: the fewest it starts on), checked against the
    cluster before Train asks for it: Train would wait forever. An autoscaling cluster is
    asked for it and given train.resources_wait_s; a fixed one fails at once."""
    t = cfg.train
    workers = t.min_workers or t.num_workers
    if cluster.can_grow():
        cluster.require(
            [{"CPU": t.cpus_per_worker}] * workers + [{"CPU": 1.0}],
            f"{workers} workers × train.cpus_per_worker={t.cpus_per_worker:g}, and a CPU "
            "to read and decode data,",
            "Set fewer workers, or let the autoscaler add more nodes (its max_workers).",
            wait_s=t.resources_wait_s,
        )
    else:
        check_cpus(cfg, ray_cpus(), workers)
    if t.use_gpu:
        cluster.require(
            [{"GPU": 1.0}] * max(workers, 1),
            f"train.use_gpu=true with {max(workers, 1)} workers",
            "Set train.use_gpu=false, fewer workers, or add GPU nodes.",
            wait_s=t.resources_wait_s,
        )


def check_cpus(cfg: Config, cluster_cpus: float, workers: int | None = None) -> None:
    """Workers that hold every CPU leave none for reading and decoding data: the run would
    sit at "0 rows". Refused before it starts, with the numbers and the ways out (workers:
    the count to check, train.num_workers by default)."""
    workers = workers or cfg.train.num_workers
    need = workers * cfg.train.cpus_per_worker
    if need < cluster_cpus:
        return
    fit_in = (cluster_cpus - 1) / workers
    hint = f"train.cpus_per_worker={fit_in:.2g}, " if fit_in > 0 else ""
    raise ValueError(
        f"{workers} workers × train.cpus_per_worker {cfg.train.cpus_per_worker:g} = "
        f"{need:g} CPUs, and the cluster has {cluster_cpus:g}: none would be left to read "
        f"and decode data, and training would wait forever. Leave at least one CPU free: "
        f"{hint}fewer workers, or more nodes."
    )
