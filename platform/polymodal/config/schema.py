"""The config sections polymodal itself owns (data reading, training, optimisation, evaluation,
tuning, storage) and the shells that assemble.py fills with the plug-ins' sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from polymodal import storage
from polymodal.config.suites import SuiteConfig
from polymodal.sections import Float, PretrainedSettings, Section, TowerSettings


class SourceConfig(Section):
    """One dataset of a mixture (data.sources): any dataset data.path takes, with any subset
    of the model's modalities."""

    path: str = Field(description="As data.path: an ingested dataset or webdataset tars.")
    weight: Float = Field(
        1.0,
        ge=0,
        description="Upsampling factor: an epoch draws weight × its train rows from it (2: "
        "each row twice; 0.5: a different half each epoch), so its share of the samples is "
        "weight × rows over the sum for all sources. 0: validation only (its val split is "
        "measured every epoch, its train split never read), e.g. held-out rows that pair "
        "what no training source pairs.",
    )
    name: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="What its metrics are called (default: the path's last part).",
    )
    val_path: str = Field("", description="webdataset only: its val tars (default data.val_path).")
    label_names: list[str] = Field(
        default_factory=list,
        description="webdataset only: the names of its .cls ids (default data.label_names).",
    )

    def named(self) -> str:
        """Its name, or its path's last part (a tar pattern's folder)."""
        parts = [p for p in self.path.split("/") if p and "{" not in p and "*" not in p]
        return self.name or (parts[-1] if parts else "source")


class DataConfig(Section):
    """The dataset and how it is read. Each modality adds its own settings here (image_size,
    text_max_len, ...; see its Modality.data_settings)."""

    path: str = Field(
        "data/fashion-mnist",
        description="A dataset written by `polymodal data ingest` (local or s3://), or "
        "webdataset tars read in place: a pattern like s3://bucket/shards/{00000..00099}.tar "
        "with val_path for val.",
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Several datasets in one run, instead of data.path: each a path, a "
        "weight and a name. The model's modalities are the union of theirs; each modality "
        "must share a source with another one, so that every pair is bound through them.",
    )
    mix: Literal["rows", "batches"] = Field(
        "rows",
        description="How data.sources meet in a step: rows = every batch mixes rows of all "
        "sources; batches = each global batch comes from one source, drawn in proportion to "
        "its weighted rows (in-batch negatives from one distribution, a train/loss/<source> "
        "per source). An epoch is one pass over every source's weighted rows either way.",
    )
    val_path: str = Field("", description="webdataset only: the val tars.")
    label_names: list[str] = Field(
        default_factory=list, description="webdataset only: the names of the .cls ids."
    )
    decode_batch_size: int = Field(1024, ge=1, description="Rows per Ray Data decoding task.")
    prefetch_batches: int = Field(
        4,
        ge=0,
        description="Batches each worker decodes ahead of the step.",
    )
    decode_cache_mb: int = Field(
        2048,
        ge=0,
        description="Train row groups are decoded once and kept on each node's disk, "
        "memory-mapped, when the decoded train split is at most this many MB (0: off; not "
        "with image augmentation, whose random crop needs the raw picture). From the "
        "second epoch on, workers read their rows there themselves instead of through Ray "
        "Data's tasks: same rows, order and resume positions.",
    )
    decode_cache_dir: str = Field(
        "", description='Where on each node the decoded cache lives ("": the temp dir).'
    )
    cache_val_rows: int = Field(
        50_000, description="Rank 0 keeps a decoded val split this small in memory."
    )
    shuffle_buffer_rows: int = Field(
        0,
        ge=0,
        description="Training order changes every epoch: row groups come in an order drawn "
        "from (train.seed, epoch) and each one's rows are permuted (free; data/order.py). A "
        "worker-side buffer mixes rows across blocks too, at a cost (~35% slower steps on "
        "Fashion-MNIST with 2 CPU workers at 2,048 rows): 0 = off.",
    )
    max_bad_fraction: Float = Field(
        0.01,
        ge=0,
        le=1,
        description="Rows that cannot be decoded (bad image, empty text, label out of range...) "
        "are dropped and counted; the run fails once they are more than this fraction of the "
        "rows read.",
    )
    stall_timeout_s: Float = Field(
        300.0,
        description="A data pipeline that produces nothing for this long fails (Ray Data's "
        "ExecutionTimeoutError) instead of waiting silently, e.g. for CPUs the workers hold.",
    )


class OpenCLIPConfig(Section):
    """The OpenCLIP model whose towers model.{image,text}.encoder: open_clip are; written by
    `polymodal import open_clip` (its weights come from that checkpoint: train.init_from)."""

    arch: str = Field("", description="The name it was imported under (for people).")
    model_cfg: dict[str, Any] = Field(
        default_factory=dict, description="open_clip's model config (what builds it)."
    )
    image_mean: list[float] = Field(default_factory=list, description="Its image mean.")
    image_std: list[float] = Field(default_factory=list, description="Its image std.")
    image_resize: Literal["shortest", "squash"] = Field(
        "shortest",
        description="shortest: the shorter side to the image size, then the centre crop (its "
        "preprocess_cfg's resize_mode); squash: both sides.",
    )
    image_interpolation: Literal["bicubic", "bilinear"] = Field(
        "bicubic", description="Its preprocess_cfg's interpolation."
    )


class ModelConfig(Section):
    """The model: which modalities, the shared embedding, and a section per modality
    (model.<modality>: its encoder and settings; see its Modality.model_settings)."""

    modalities: list[str] = Field(
        default_factory=lambda: ["image", "text"],
        description="The modalities trained together (names in polymodal.modalities).",
    )
    embed_dim: int = Field(128, ge=1, description="Width of the shared embedding space.")
    dropout: Float = Field(0.0, description="Dropout in the towers that have it.")
    classifier_hidden: int = Field(256, description="Hidden width of the classifier head.")
    open_clip: OpenCLIPConfig = Field(
        default_factory=OpenCLIPConfig, description=OpenCLIPConfig.__doc__
    )

    def section(self, modality: str) -> TowerSettings:
        """model.<modality>."""
        return getattr(self, modality)

    def tuning(self, modality: str) -> str:
        """model.<modality>.tuning; "finetune" for a tower that cannot be pretrained."""
        section = self.section(modality)
        return section.tuning if isinstance(section, PretrainedSettings) else "finetune"


class ObjectiveConfig(Section):
    """The joint objective: a weight per term (objective.weights.<term>; > 0 trains it), how
    the weights combine, and a section per term that has settings (objective.<term>)."""

    weighting: Literal["static", "uncertainty"] = Field(
        "static",
        description="static: the weighted sum | uncertainty: Kendall et al. 2018, each term's "
        "weight learned (the configured weights only choose the terms). objectives.joint."
        "WEIGHTINGS.",
    )


class OptimConfig(Section):
    """AdamW with linear warmup and cosine decay."""

    lr: Float = Field(2e-3, gt=0, description="Peak learning rate.")
    weight_decay: Float = Field(0.05, description="AdamW's decoupled weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Steps of linear warmup.")
    min_lr_ratio: Float = Field(0.01, description="Cosine decays to lr * min_lr_ratio.")
    grad_clip: Float = Field(1.0, description="Max global grad norm; 0 turns clipping off.")


class GradCacheConfig(Section):
    """The gradient cache (Gao et al. 2021): a worker's batch far larger than fits in memory."""

    chunk_size: int = Field(
        0,
        ge=0,
        description="Rows per sub-batch; 0 turns the gradient cache off. Embeddings are "
        "computed without grad, the loss gradient is cached, then each sub-batch is re-encoded "
        "and back-propagated (exact for per-sample layers; BatchNorm statistics become per "
        "sub-batch).",
    )


class TrainConfig(Section):
    """The Ray Train run: workers, checkpoints, tracking and the step strategy."""

    name: str = Field(
        "run", description="Run directory name under storage_path; the same name resumes."
    )
    resume: Literal["auto", "never", "force"] = Field(
        "auto",
        description="A run name that has checkpoints: auto resumes it when its model, data and "
        "preprocessing are this config's and refuses otherwise, naming what differs; force "
        "resumes anyway; never moves the old run aside (run-replaced-<time>) and starts afresh.",
    )
    storage_path: str = Field("runs", description="Where run directories go (local or s3://).")
    epochs: int = Field(10, ge=1, description="Epochs to train.")
    batch_size: int = Field(256, ge=1, description="Global batch, split evenly across workers.")
    num_workers: int = Field(2, ge=0, description="Ray Train workers (0: in the driver).")
    min_workers: int = Field(
        0,
        ge=0,
        description="Elastic training (0 = off): Ray Train runs on min_workers..num_workers "
        "as the cluster allows; each resize resumes from the newest checkpoint, the epoch's "
        "rest dealt over the new workers (every sample once). A lost worker counts toward "
        "max_failures; the global batch stays (each worker: batch_size // workers rows).",
    )
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: Float = Field(1.0, description="CPUs Ray reserves for each worker.")
    resources_wait_s: Float = Field(
        600.0,
        ge=0,
        description="On an autoscaling cluster, how long to wait for the GPUs the workers need "
        "before failing (a fixed cluster without them fails at once).",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="Ray's placement group strategy for the workers. PACK: on as few nodes as "
        "fit; SPREAD: one per node where possible.",
    )
    max_failures: int = Field(0, description="Worker group restarts Ray Train may make.")
    seed: int = Field(
        0, description="Model init and the training order (pieces dealt to ranks, rows shuffled)."
    )
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="A checkpoint every N steps, besides the end of each epoch (0 = off): a "
        "resumed run continues mid-epoch with the next unseen batch.",
    )
    checkpoint_every_minutes: Float = Field(
        0.0, ge=0, description="A checkpoint every M minutes (0 = off), as for steps."
    )
    checkpoint_upload: Literal["sync", "async"] = Field(
        "sync",
        description="sync: training waits while the checkpoint is uploaded; async: it goes on "
        "once the files are written locally, and Ray uploads them in the background.",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description="The newest N checkpoints are kept (Ray deletes the others; resuming needs "
        "the newest), or with keep_best_metric the best N by it and the latest always.",
    )
    keep_best_metric: str = Field("", description="A validation metric to keep checkpoints by.")
    keep_best_mode: Literal["max", "min"] = Field("max", description="Better is max or min.")
    tracking: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers fed from rank 0 with metrics.json's names and steps "
        "(the `tracking` extra): tensorboard (event files in the run directory), mlflow "
        "(MLFLOW_TRACKING_URI, or SQLite in the run directory), wandb (WANDB_MODE=offline keeps "
        "it on disk).",
    )
    tracking_project: str = Field("polymodal", description="The MLflow experiment / W&B project.")
    log_every_steps: int = Field(50, ge=1, description="Steps between logged train metrics.")
    sample_log_dir: str = Field(
        "",
        description="A local directory where every worker appends the sample ids of each step "
        "it trains (epoch-E-rank-R-pid-P.txt, a line per step): audits what a restart repeated "
        "or skipped.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every worker holds the whole model; fsdp: weights, gradients and "
        "optimizer state sharded over the workers (FSDP2), for towers bigger than one device.",
    )
    grad_cache: GradCacheConfig = Field(
        default_factory=GradCacheConfig, description=GradCacheConfig.__doc__
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="The forward pass under autocast: auto is bf16 on CUDA and fp32 on CPU; "
        "bf16 runs on CPU too; fp16 (CUDA only) scales the loss with a GradScaler. Losses "
        "always sum in fp32.",
    )
    compile: bool = Field(
        False,
        description="torch.compile each tower in place (checkpoints keep their keys); where "
        "the compiler backend cannot build, a warning and eager towers.",
    )
    init_from: str = Field(
        "",
        description="A checkpoint (local or s3://) whose weights this run starts from, and "
        "whose model section it uses under the model keys this config sets: fine-tune an "
        "imported OpenCLIP model or a run of your own. Resuming a run (same name) takes "
        "precedence.",
    )
    cache_frozen_features: bool = Field(
        True,
        description="Frozen towers (model.<m>.tuning: freeze) run once per row: their features "
        "are kept in a table per node on disk (feature_cache_dir), which later runs with the "
        "same tower, preprocessing and dataset reuse. Not for images that augmentation changes.",
    )
    feature_cache_dir: str = Field("", description="Default: the temp dir.")


class EvalConfig(Section):
    """Validation metrics (val/*), computed on rank 0 after every epoch and by `polymodal eval`."""

    recall_ks: list[int] = Field(
        default_factory=lambda: [1, 5, 10], description="K of val/recall@K."
    )
    batch_size: int = Field(
        512, ge=1, description="Val batches; the val losses use in-batch negatives."
    )
    chunk_size: int = Field(1024, ge=1, description="Query rows per similarity block.")
    zero_shot_templates: list[str] = Field(
        default_factory=list,
        description='Prompts for zero-shot; "{}" becomes the label name. Empty: the dataset\'s '
        "caption templates.",
    )
    query_prompt: str = Field("", description="Put before query texts under mteb.")
    document_prompt: str = Field("", description="Put before document texts under mteb.")
    suites: list[SuiteConfig] = Field(default_factory=list, description=SuiteConfig.__doc__)


class TuneConfig(Section):
    """`polymodal tune`: a sweep named train.name, its trials under storage_path/name."""

    space: dict[str, Any] = Field(
        default_factory=dict,
        description="config key -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | "
        "{loguniform: [lo, hi]}; checked against the keys it names (tune.space.check_tune).",
    )
    num_samples: int = Field(4, description="Samples drawn (with grid: repeats of the grid).")
    metric: str = Field("val/zero_shot_accuracy", description="Any validation metric name.")
    mode: Literal["max", "min"] = Field("max", description="Better is max or min.")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha (stops weak trials early) | fifo: tune.sweep.SCHEDULERS."
    )
    searcher: Literal["random", "optuna"] = Field(
        "random",
        description="random (grid values enumerated) | optuna: tune.sweep.SEARCHERS.",
    )
    max_concurrent_trials: int = Field(
        0, description="0: as many as free CPUs/GPUs hold, one CPU left for data."
    )
    grace_period: int = Field(1, description="ASHA: epochs every trial runs before a stop.")
    reduction_factor: int = Field(2, description="ASHA: keep the top 1/reduction_factor.")


class StorageConfig(Section):
    """S3 settings for every s3:// path of a run; empty fields fall back to the standard AWS_*
    variables. Keys are better left to the environment (or the cluster's IAM role / Secret):
    they are never written to run dirs, checkpoints or logs, and never sent to a remote Ray
    cluster, whose nodes must have their own."""

    endpoint_url: str = Field(
        "", description="S3-compatible stores, e.g. http://minio.internal:9000."
    )
    region: str = Field("", description="AWS_REGION when empty.")
    access_key_id: str = Field("", repr=False, description="AWS_ACCESS_KEY_ID when empty.")
    secret_access_key: str = Field("", repr=False, description="AWS_SECRET_ACCESS_KEY when empty.")

    def apply(self) -> None:
        """These settings for this process and the Ray workers it starts (storage.configure)."""
        storage.configure(
            self.endpoint_url, self.region, self.access_key_id, self.secret_access_key
        )


SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")


class Config(Section):
    """A run's whole configuration. The data, model and objective sections are completed by
    the registered modalities and objective terms (config.assemble.config_class)."""

    data: DataConfig = Field(default_factory=DataConfig, description=DataConfig.__doc__)
    model: ModelConfig = Field(default_factory=ModelConfig, description=ModelConfig.__doc__)
    objective: ObjectiveConfig = Field(
        default_factory=ObjectiveConfig, description=ObjectiveConfig.__doc__
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description=OptimConfig.__doc__)
    train: TrainConfig = Field(default_factory=TrainConfig, description=TrainConfig.__doc__)
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__)
    tune: TuneConfig = Field(default_factory=TuneConfig, description=TuneConfig.__doc__)
    storage: StorageConfig = Field(default_factory=StorageConfig, description=StorageConfig.__doc__)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the secrets (SECRET_KEYS come back empty): this is what run dirs,
        checkpoints and Ray workers get."""
        tree = self.model_dump()
        for key in SECRET_KEYS:
            section, name = key.split(".")
            tree[section][name] = ""
        return tree
