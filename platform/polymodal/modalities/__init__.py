"""The modality registry: MODALITIES maps each name to its Modality (one file each), and
Preprocessing holds the settings every registered modality declares, as checkpoints store them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from polymodal.modalities.audio import AUDIO
from polymodal.modalities.base import COMMON_BAD_ROW_REASONS, Modality
from polymodal.modalities.image import IMAGE
from polymodal.modalities.text import TEXT
from polymodal.modalities.vector import VECTOR

MODALITIES: dict[str, Modality] = {m.name: m for m in (IMAGE, TEXT, AUDIO, VECTOR)}


def register(modality: Modality) -> None:
    """Add a modality (or replace one of the same name); see docs/architecture.md."""
    MODALITIES[modality.name] = modality


def get(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality '{name}' (registered: {', '.join(MODALITIES)})")
    return MODALITIES[name]


def augmentations(cfg: Any) -> dict[str, Any]:
    """The model's modalities that training changes randomly → what their decode takes."""
    out = {}
    for m in cfg.model.modalities:
        make = MODALITIES[m].augmentation
        augment = make(cfg) if make is not None else None
        if augment is not None:
            out[m] = augment
    return out


def bad_row_reasons() -> tuple[str, ...]:
    """Why a row is dropped at training time, as counted in metrics and `data validate`."""
    own = (r for m in MODALITIES.values() for r in m.bad_row_reasons)
    return COMMON_BAD_ROW_REASONS + tuple(own)


class Preprocessing:
    """Everything needed to turn raw values into model inputs; stored in every checkpoint as
    {"modalities": [...], "image_size": 28, ...}: each registered modality's settings
    (Modality.defaults), as plain attributes (prep.image_size: read for every decoded value,
    where a __getattr__ fallback cost 7% of decoding)."""

    def __init__(self, modalities: list[str], **settings: Any):
        values: dict[str, Any] = {}
        for m in MODALITIES.values():
            values.update(copy.deepcopy(m.defaults))
        unknown = set(settings) - set(values)
        if unknown:
            raise ValueError(f"preprocessing: unknown settings {sorted(unknown)}")
        for name in modalities:
            get(name)
        self.modalities = list(modalities)
        vars(self).update({**values, **settings})

    if TYPE_CHECKING:  # for the type checker only: at run time they are plain attributes

        def __getattr__(self, name: str) -> Any:
            """A registered modality's setting (Modality.defaults names them)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocessing) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Preprocessing({self.to_dict()})"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))
