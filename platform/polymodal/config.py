"""Typed run configuration: dataclasses loaded from YAML plus `key=value` overrides.

Unknown keys and wrong types raise ConfigError naming the dotted key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class AugmentConfig:
    """Random image changes for the train split, done in the Ray Data decoding tasks."""

    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # area kept; [1,1]: off
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.333])  # aspect ratio range
    hflip: float = 0.0  # probability of a horizontal flip


@dataclass
class DataConfig:
    # A dataset written by `polymodal data ingest` (local or s3://), or webdataset tars read
    # in place: a pattern like s3://bucket/shards/{00000..00099}.tar with val_path for val.
    path: str = "data/fashion-mnist"
    val_path: str = ""  # webdataset only: the val tars
    label_names: list[str] = field(default_factory=list)  # webdataset only: names of .cls ids
    image_size: int = 28  # images are resized to image_size x image_size
    image_channels: int = 0  # 0: take it from the manifest (1 for grayscale, 3 for RGB)
    text_max_len: int = 48  # UTF-8 bytes (or a pretrained tower's tokens) kept per text
    audio_rate: int = 8000  # Hz every clip is resampled to
    audio_seconds: float = 2.0  # clips are cut or zero-padded to this length
    n_mels: int = 40  # log-mel bands (25 ms-ish windows, hop of 128 samples)
    decode_batch_size: int = 1024  # rows per Ray Data decoding task
    prefetch_batches: int = 4  # batches each worker decodes ahead of the step
    cache_val_rows: int = 50_000  # rank 0 keeps a decoded val split this small in memory
    # Training order changes every epoch: shards come in random order and rows are permuted
    # within each decoded block (free). A worker-side buffer mixes rows across blocks too, at
    # a cost (~35% slower steps on Fashion-MNIST with 2 CPU workers at 2,048 rows): 0 = off.
    shuffle_buffer_rows: int = 0
    # Rows that cannot be decoded (bad image, empty text, label out of range...) are dropped
    # and counted; the run fails once they are more than this fraction of the rows read.
    max_bad_fraction: float = 0.01
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ImageModelConfig:
    encoder: str = "small_cnn"  # key of models.build.IMAGE_ENCODERS
    width: int = 32
    norm: str = "batch"  # small_cnn: batch | group (per sample, exact with train.grad_cache)


@dataclass
class TextModelConfig:
    encoder: str = "byte_transformer"  # key of models.build.TEXT_ENCODERS (minilm: pretrained)
    width: int = 64
    layers: int = 2
    heads: int = 4
    # Pretrained towers only: freeze (LiT's locked tower) | finetune | lock_then_unlock.
    tuning: str = "finetune"
    unlock_epoch: int = 1  # lock_then_unlock: locked for this many epochs
    lr_scale: float = 0.1  # the tower's learning rate is optim.lr * lr_scale


@dataclass
class AudioModelConfig:
    encoder: str = "mel_cnn"  # key of models.build.AUDIO_ENCODERS
    width: int = 16
    norm: str = "batch"  # batch | group, as for images


@dataclass
class VectorModelConfig:
    encoder: str = "mlp"  # key of models.build.VECTOR_ENCODERS
    width: int = 128
    hidden: int = 256


@dataclass
class ModelConfig:
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    embed_dim: int = 128
    dropout: float = 0.0
    classifier_hidden: int = 256
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)
    vector: VectorModelConfig = field(default_factory=VectorModelConfig)


@dataclass
class WeightsConfig:
    contrastive: float = 1.0
    reconstruction: float = 0.0
    classification: float = 0.0


@dataclass
class ContrastiveConfig:
    kind: str = "infonce"  # key of objectives.contrastive.CONTRASTIVE_KINDS: infonce | sigmoid
    temperature_init: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    bias_init: float = -10.0  # sigmoid only: SigLIP's learnable logit bias
    gather: str = "local"  # local | full | none (see objectives.contrastive.info_nce)
    chunk_size: int = 4096  # sigmoid only: columns per recomputed block
    positives: str = "diagonal"  # diagonal | label | text: which other rows count as positives
    # Weight per modality pair, e.g. {"image-text": 1.0}; pairs not named weigh 1.0.
    pair_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TermModalitiesConfig:
    modalities: list[str] = field(default_factory=list)  # empty: every modality of the model


@dataclass
class ObjectiveConfig:
    weighting: str = "static"  # key of objectives.joint.WEIGHTINGS
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    reconstruction: TermModalitiesConfig = field(default_factory=TermModalitiesConfig)
    # Modalities fused for the classifier head; leave out one that carries the label itself.
    classification: TermModalitiesConfig = field(default_factory=TermModalitiesConfig)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off


@dataclass
class GradCacheConfig:
    # Rows per sub-batch; 0 turns the gradient cache off. With it, a worker's batch can be far
    # larger than fits in memory: embeddings are computed without grad, the loss gradient is
    # cached, then each sub-batch is re-encoded and back-propagated (exact for per-sample
    # layers; BatchNorm statistics become per sub-batch).
    chunk_size: int = 0


# Ray's placement group strategies for the worker group.
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class TrainConfig:
    name: str = "run"  # run directory name under storage_path; same name again resumes
    storage_path: str = "runs"
    epochs: int = 10
    batch_size: int = 256  # global batch, split evenly across workers
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # PACK: workers on as few nodes as fit; SPREAD: one per node where possible.
    placement_strategy: str = "PACK"
    max_failures: int = 0
    seed: int = 0
    checkpoints_to_keep: int = 2
    log_every_steps: int = 50
    # A local directory where every worker appends the sample ids of each step it trains
    # (epoch-E-rank-R-pid-P.txt, a line per step): audits what a restart repeated or skipped.
    sample_log_dir: str = ""
    grad_cache: GradCacheConfig = field(default_factory=GradCacheConfig)


@dataclass
class EvalConfig:
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 512  # val batches; val/loss/contrastive uses in-batch negatives
    chunk_size: int = 1024  # query rows per similarity block, bounds eval memory
    # Prompts for zero-shot; "{}" becomes the label name. Empty: the dataset's caption templates.
    zero_shot_templates: list[str] = field(default_factory=list)


@dataclass
class TuneConfig:
    """`polymodal tune`: a sweep named train.name, its trials under storage_path/name."""

    # config key -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 4  # samples drawn from the space (with grid: repeats of the grid)
    metric: str = "val/zero_shot_accuracy"  # any validation metric name
    mode: str = "max"
    scheduler: str = "asha"  # asha (stops weak trials early) | fifo
    searcher: str = "random"  # random (grid values enumerated) | optuna
    max_concurrent_trials: int = 0  # 0: as many as the cluster's free CPUs/GPUs hold
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: keep the top 1/reduction_factor at each rung


@dataclass
class StorageConfig:
    """S3 settings for every s3:// path of a run; empty fields fall back to the standard AWS_*
    variables. Keys are better left to the environment (or the cluster's IAM role / Secret):
    they are never written to run dirs, checkpoints or logs, and never sent to a remote Ray
    cluster, whose nodes must have their own."""

    endpoint_url: str = ""  # S3-compatible stores, e.g. http://minio.internal:9000
    region: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)


SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the secrets (SECRET_KEYS come back empty): this is what run dirs,
        checkpoints and Ray workers get."""
        tree = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            section, name = key.split(".")
            tree[section][name] = ""
        return tree


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _check_value(path: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:  # checked by the code that reads it (e.g. tune.space)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        return [_check_value(f"{path}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return {
            _check_value(f"{path}.{k}", key_tp, k): _check_value(f"{path}.{k}", val_tp, v)
            for k, v in value.items()
        }
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; users mean the number
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise ConfigError(f"'{path}' has unsupported type {tp}")
    if not ok:
        raise ConfigError(f"'{path}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return float(value) if tp is float else value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(f"unknown config key '{path}'{_suggest(path, valid)}")
        kwargs[key] = _check_value(path, hints[key], value)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=1` strings → (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=3)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {exc}") from exc
        pairs.append((key.strip(), value))
    return pairs


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    tree = dict(data)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def config_with(cfg: Config, values: dict[str, Any]) -> Config:
    """cfg with dotted keys set to values, checked like a loaded config."""
    tree = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(tree, key, value)
    new = _build(Config, tree)
    validate(new)
    return new


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: defaults) and apply `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


KNOWN_MODALITIES = ("image", "text", "audio", "vector")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    mods = cfg.model.modalities
    for m in mods:
        if m not in KNOWN_MODALITIES:
            close = _suggest(m, list(KNOWN_MODALITIES))
            raise ConfigError(f"'model.modalities': unknown modality '{m}'{close}")
    if not mods:
        raise ConfigError("'model.modalities' must name at least one modality")
    for key in ("reconstruction", "classification"):
        for m in getattr(cfg.objective, key).modalities:
            if m not in mods:
                raise ConfigError(
                    f"'objective.{key}.modalities': '{m}' is not in model.modalities {mods}"
                )
    # Imported here: loading torch is only worth it once a config is being validated.
    from polymodal.objectives.contrastive import CONTRASTIVE_KINDS, GATHER_MODES, POSITIVES

    c = cfg.objective.contrastive
    for key, value, allowed in (
        ("gather", c.gather, GATHER_MODES),
        ("kind", c.kind, tuple(CONTRASTIVE_KINDS)),
        ("positives", c.positives, POSITIVES),
    ):
        if value not in allowed:
            raise ConfigError(
                f"'objective.contrastive.{key}' must be one of {', '.join(allowed)}, "
                f"got {value!r}{_suggest(value, list(allowed))}"
            )
    from polymodal.objectives.joint import WEIGHTINGS

    if cfg.objective.weighting not in WEIGHTINGS:
        w = cfg.objective.weighting
        raise ConfigError(
            f"'objective.weighting' must be one of {', '.join(WEIGHTINGS)}, got {w!r}"
            f"{_suggest(w, list(WEIGHTINGS))}"
        )
    from polymodal.models.encoders.minilm import TUNINGS

    text = cfg.model.text
    if text.tuning not in TUNINGS:
        raise ConfigError(
            f"'model.text.tuning' must be one of {', '.join(TUNINGS)}, got {text.tuning!r}"
            f"{_suggest(text.tuning, list(TUNINGS))}"
        )
    if text.encoder == "minilm" and "text" in mods:
        from polymodal.pretrained import pretrained_dir

        try:
            pretrained_dir("minilm")
        except RuntimeError as exc:
            raise ConfigError(f"'model.text.encoder: minilm': {exc}") from None
    if text.tuning != "finetune" and text.encoder == "byte_transformer":
        raise ConfigError(
            f"'model.text.tuning: {text.tuning}' locks a pretrained tower; "
            "the byte_transformer trains from scratch (set model.text.encoder: minilm)"
        )
    if c.positives == "text" and "text" not in mods:
        raise ConfigError("'objective.contrastive.positives: text' needs the text modality")
    if cfg.train.grad_cache.chunk_size < 0 or c.chunk_size < 1:
        raise ConfigError(
            "'train.grad_cache.chunk_size' >= 0 and 'objective.contrastive.chunk_size' >= 1"
        )
    if cfg.objective.weights.contrastive > 0 and len(mods) < 2:
        raise ConfigError("'objective.weights.contrastive' > 0 needs two or more modalities")
    if not 0 <= cfg.data.max_bad_fraction <= 1:
        raise ConfigError(
            f"'data.max_bad_fraction' must be between 0 and 1, got {cfg.data.max_bad_fraction}"
        )
    t = cfg.train
    if t.num_workers < 0 or t.epochs < 1 or t.batch_size < 1:
        raise ConfigError("'train.num_workers' >= 0, 'train.epochs' >= 1, 'train.batch_size' >= 1")
    if t.placement_strategy not in PLACEMENT_STRATEGIES:
        raise ConfigError(
            f"'train.placement_strategy' must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
            f"got {t.placement_strategy!r}"
        )
    if t.batch_size % max(t.num_workers, 1):
        raise ConfigError(
            f"'train.batch_size' ({t.batch_size}) must divide evenly across "
            f"train.num_workers ({t.num_workers})"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError("'optim.lr' must be > 0")
