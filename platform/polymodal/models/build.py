"""Build a JointModel from config: each modality's encoder comes from its Modality (by the
name in model.<modality>.encoder), and each objective term adds its parts (objectives.TERMS)."""

from __future__ import annotations

from typing import Any

from polymodal.config import Config
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.joint import JointModel
from polymodal.objectives import TERMS, active_terms
from polymodal.sections import PretrainedSettings
from polymodal.towers.checkpointing import checkpoint_activations
from polymodal.towers.tuning import Tunable


def unlock_towers(model: JointModel, cfg: Config, epoch: int) -> None:
    """lock_then_unlock: a pretrained tower trains from epoch model.<modality>.unlock_epoch + 1
    on."""
    for m, encoder in model.encoders.items():
        section = cfg.model.section(m)
        if not isinstance(section, PretrainedSettings):
            continue  # a tower that cannot be pretrained has no tuning (ModelConfig.tuning)
        if section.tuning == "lock_then_unlock" and epoch > section.unlock_epoch:
            for module in encoder.modules():  # every pretrained tower is a Tunable
                if isinstance(module, Tunable) and module.locked:
                    module.unlock()


def recompute_activations(model: JointModel, cfg: Config) -> None:
    """model.<modality>.activation_checkpointing for each tower that trains (a frozen one
    keeps no activations anyway)."""
    for m in cfg.model.modalities:
        if cfg.model.section(m).activation_checkpointing and cfg.model.tuning(m) != "freeze":
            checkpoint_activations(model.encoders[m], f"model.{m}")


def build_model(cfg: Config, prep: Preprocessing, num_classes: int = 0) -> JointModel:
    encoders = {}
    for m in cfg.model.modalities:
        name, registry = cfg.model.section(m).encoder, MODALITIES[m].encoders
        if name not in registry:  # config declares the same choices; this is a last guard
            raise ValueError(f"model.{m}.encoder: unknown '{name}'; choose from {sorted(registry)}")
        encoders[m] = registry[name](cfg, prep)
    parts: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for term in TERMS.values():
        for key, value in term.model_parts(cfg, prep, num_classes).items():
            if key in parts:
                raise ValueError(f"objective terms {owner[key]} and {term.name} both set {key}")
            parts[key], owner[key] = value, term.name
    learned = list(active_terms(cfg)) if cfg.objective.weighting == "uncertainty" else []
    return JointModel(encoders, cfg.model.embed_dim, learned_weight_terms=learned, **parts)
