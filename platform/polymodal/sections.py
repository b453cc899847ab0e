"""The base of every config section, for config.py and for the plug-ins (modalities, objective
terms) that declare their own sections: strict pydantic, YAML's float strings read as numbers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


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
    """A config section: unknown keys are errors, and types are strict (an int refuses "3"
    and True, a bool refuses 1: YAML typos must not coerce). Each field's description is its
    documentation (docs/config.md is generated from it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, strict=True)


# Norm layers of the small CNNs (towers/image.NORMS).
Norm = Literal["batch", "group"]
# How a pretrained tower trains (towers/tuning.TUNINGS).
Tuning = Literal["freeze", "finetune", "lock_then_unlock"]


class TowerSettings(Section):
    """Settings every tower has; a modality's model section extends it (config narrows
    `encoder` to the names of the modality's encoders, the first the default)."""

    encoder: str = Field("", description="The tower: one of the modality's encoders.")
    activation_checkpointing: bool = Field(
        False,
        description="Recompute the tower's blocks' activations in backward instead of keeping "
        "them: less memory, one more forward of the tower per step (towers/checkpointing.py).",
    )


class PretrainedSettings(TowerSettings):
    """A tower that can start from pretrained weights: a pip package's, a Hugging Face model
    (encoder: hf) or an imported OpenCLIP model (encoder: open_clip)."""

    hf_model: str = Field(
        "", description="encoder: hf only: a Hugging Face model directory or hub id."
    )
    tuning: Tuning = Field(
        "finetune",
        description="Pretrained towers only: freeze (LiT's locked tower) | finetune | "
        "lock_then_unlock (locked for unlock_epoch epochs, then trained).",
    )
    unlock_epoch: int = Field(1, description="lock_then_unlock: epochs the tower stays locked.")
    lr_scale: Float = Field(
        0.1, description="The tower's learning rate is optim.lr * lr_scale (pretrained only)."
    )


class ModalitiesSettings(Section):
    """A section naming a subset of the model's modalities (an objective term's)."""

    modalities: list[str] = Field(
        default_factory=list, description="Empty: every modality of the model."
    )
