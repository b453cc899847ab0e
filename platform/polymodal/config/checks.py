"""Cross-field checks that types alone cannot express, each a function returning its problems
(every one naming its dotted key); the modalities' and objective terms' own checks join them."""

from __future__ import annotations

from collections.abc import Callable

from polymodal.config.errors import suggest
from polymodal.config.schema import Config
from polymodal.config.suites import check_suites
from polymodal.modalities import MODALITIES
from polymodal.objectives import TERMS
from polymodal.pretrained import PRETRAINED, check_hf_model, check_open_clip, pretrained_file
from polymodal.sections import ModalitiesSettings, PretrainedSettings


def modalities(cfg: Config) -> list[str]:
    mods = cfg.model.modalities
    if not mods:
        return ["'model.modalities' must name at least one modality"]
    return [  # the registry: built-in modalities and registered ones
        f"'model.modalities': unknown modality '{m}'{suggest(m, list(MODALITIES))}"
        for m in mods
        if m not in MODALITIES
    ]


def term_modalities(cfg: Config) -> list[str]:
    """A term's own list of modalities (objective.<term>.modalities) names model modalities."""
    mods = cfg.model.modalities
    problems = []
    for name, term in TERMS.items():
        section = term.settings(cfg)
        if isinstance(section, ModalitiesSettings):
            problems += [
                f"'objective.{name}.modalities': '{m}' is not in model.modalities {mods}"
                for m in section.modalities
                if m not in mods
            ]
    return problems


def is_pretrained(encoder: str) -> bool:
    """Weights from a pip package (PRETRAINED), Hugging Face, or an imported OpenCLIP model."""
    return encoder in PRETRAINED or encoder in ("hf", "open_clip")


def pretrained_towers(cfg: Config) -> list[str]:
    """A pretrained tower's package or model (or a byte_transformer's tokenizer) is there;
    tuning other than finetune only for pretrained towers."""
    problems = []
    for m in cfg.model.modalities:
        section = cfg.model.section(m)
        if not isinstance(section, PretrainedSettings):
            continue
        encoder = section.encoder
        tokenizer = getattr(section, "tokenizer", "bytes")
        if encoder == "byte_transformer" and tokenizer != "bytes":
            try:
                pretrained_file(tokenizer)
            except RuntimeError as exc:
                problems.append(f"'model.{m}.tokenizer: {tokenizer}': {exc}")
        if is_pretrained(encoder):
            try:
                if encoder == "hf":
                    check_hf_model(section.hf_model)
                elif encoder == "open_clip":
                    check_open_clip(cfg.model.open_clip.model_cfg, cfg.model.embed_dim)
                else:
                    pretrained_file(encoder)
            except RuntimeError as exc:
                problems.append(f"'model.{m}.encoder: {encoder}': {exc}")
        elif section.tuning != "finetune":
            pretrained = [e for e in MODALITIES[m].encoders if is_pretrained(e)]
            problems.append(
                f"'model.{m}.tuning: {section.tuning}' locks a pretrained tower; the "
                f"{encoder} trains from scratch (set model.{m}.encoder: {' | '.join(pretrained)})"
            )
    return problems


def training(cfg: Config) -> list[str]:
    t, problems = cfg.train, []
    if t.batch_size % max(t.num_workers, 1):
        problems.append(
            f"'train.batch_size' ({t.batch_size}) must divide evenly across "
            f"train.num_workers ({t.num_workers})"
        )
    if t.min_workers > t.num_workers or (t.min_workers and not t.num_workers):
        problems.append(
            f"'train.min_workers' ({t.min_workers}) must be between 1 and train.num_workers "
            f"({t.num_workers}), or 0 (a fixed worker count)"
        )
    if not t.num_workers and t.strategy == "fsdp":
        problems.append(
            "'train.strategy: fsdp' shards over Train workers; train.num_workers: 0 runs the "
            "loop in the driver alone (use ddp, or 2 or more workers)"
        )
    if t.precision == "fp16" and not t.use_gpu:
        problems.append(
            "'train.precision: fp16' needs CUDA (train.use_gpu: true): CPU autocast has no "
            "loss scaling; use bf16 on CPU"
        )
    if t.precision == "fp16" and t.grad_cache.chunk_size > 0:
        problems.append(
            "'train.precision: fp16' does not scale the gradient cache's losses; use bf16 "
            "with train.grad_cache"
        )
    mid_epoch = t.checkpoint_every_steps > 0 or t.checkpoint_every_minutes > 0
    if mid_epoch and cfg.data.shuffle_buffer_rows > 0:
        problems.append(
            "'data.shuffle_buffer_rows' > 0 holds rows a mid-epoch checkpoint cannot record; "
            "with train.checkpoint_every_steps/minutes set it to 0 (pieces and rows are "
            "shuffled anyway)"
        )
    return problems


def sources(cfg: Config) -> list[str]:
    """data.sources: not beside a data.path of its own, names unique."""
    given = cfg.data.sources
    if not given:
        return []
    problems = []
    default_path = type(cfg.data).model_fields["path"].default
    if cfg.data.path not in (default_path, *(s.path for s in given)):
        problems.append("'data.path' and 'data.sources': give one or the other")
    names = [s.named() for s in given]
    problems += [
        f"'data.sources[{i}].name': '{n}' names two sources; give each its own name"
        for i, n in enumerate(names)
        if n in names[:i]
    ]
    return problems


# (check, whether it reads the model section: a config with train.init_from gets that section
# from its checkpoint, on the driver, and is checked whole then).
CHECKS: list[tuple[Callable[[Config], list[str]], bool]] = [
    (sources, False),
    (term_modalities, True),
    (pretrained_towers, True),
    (training, False),
    (check_suites, False),
]


def problems(cfg: Config, model_known: bool = True) -> list[str]:
    """Every cross-field problem of cfg; with model_known False (the model section is still
    to come from train.init_from), only those that do not read it."""
    if model_known and modalities(cfg):
        return modalities(cfg)  # the other checks read each modality's section
    found = [
        p for check, reads_model in CHECKS if model_known or not reads_model for p in check(cfg)
    ]
    if model_known:
        for modality in (MODALITIES[m] for m in cfg.model.modalities):
            found += modality.check(cfg) if modality.check else []
        for term in TERMS.values():
            found += term.check(cfg)
    return found
