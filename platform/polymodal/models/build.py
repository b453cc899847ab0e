"""Build a JointModel from config: each modality's encoder and decoder come from its Modality
(polymodal.modalities), by the name in model.<modality>.encoder."""

from __future__ import annotations

from torch import nn

from polymodal.config import Config
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.joint import JointModel
from polymodal.towers.checkpointing import checkpoint_activations


def unlock_towers(model: nn.Module, cfg: Config, epoch: int) -> None:
    """lock_then_unlock: a pretrained tower trains from epoch model.<modality>.unlock_epoch + 1
    on."""
    for m, encoder in model.encoders.items():
        if cfg.model.tuning(m) == "lock_then_unlock" and epoch > getattr(cfg.model, m).unlock_epoch:
            for module in encoder.modules():
                if getattr(module, "locked", False):
                    module.unlock()


def recompute_activations(model: nn.Module, cfg: Config) -> None:
    """model.<modality>.activation_checkpointing for each tower that trains (a frozen one
    keeps no activations anyway)."""
    for m in cfg.model.modalities:
        if cfg.model.activation_checkpointing(m) and cfg.model.tuning(m) != "freeze":
            checkpoint_activations(model.encoders[m], f"model.{m}")


def encoder_name(cfg: Config, modality: str) -> str:
    """model.<modality>.encoder, or the modality's first encoder when config has no section
    for it (a modality registered without settings of its own)."""
    section = getattr(cfg.model, modality, None)
    return section.encoder if section is not None else next(iter(MODALITIES[modality].encoders))


def build_model(cfg: Config, prep: Preprocessing, num_classes: int = 0) -> JointModel:
    encoders = {}
    for m in cfg.model.modalities:
        name, registry = encoder_name(cfg, m), MODALITIES[m].encoders
        if name not in registry:  # config declares the same choices; this is a last guard
            raise ValueError(f"model.{m}.encoder: unknown '{name}'; choose from {sorted(registry)}")
        encoders[m] = registry[name](cfg, prep)
    terms = cfg.objective.active_terms()
    decoders = {}
    if "reconstruction" in terms:
        for m in cfg.objective.reconstruction.modalities or cfg.model.modalities:
            build_decoder = MODALITIES[m].decoder
            if build_decoder is None:
                raise ValueError(f"objective.reconstruction: modality '{m}' has no decoder")
            decoders[m] = build_decoder(cfg, prep)
    contrastive = cfg.objective.contrastive
    return JointModel(
        encoders,
        cfg.model.embed_dim,
        decoders=decoders,
        num_classes=num_classes if "classification" in terms else 0,
        classifier_hidden=cfg.model.classifier_hidden,
        classify_modalities=cfg.objective.classification.modalities or None,
        temperature_init=contrastive.temperature_init,
        # Without a contrastive term the temperature gets no gradient; freeze it (DDP needs that).
        learn_temperature=contrastive.learn_temperature and "contrastive" in terms,
        max_logit_scale=contrastive.max_logit_scale,
        logit_bias_init=contrastive.bias_init if contrastive.kind == "sigmoid" else None,
        learned_weight_terms=list(terms) if cfg.objective.weighting == "uncertainty" else [],
    )
