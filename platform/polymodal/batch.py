"""Typed containers passed between data, model and objectives: a Batch of decoded rows and the
ModelOutput a JointModel computes from it. Batch.from_dict is the one reader of the
decoded-batch keys (modalities.base.present_key / hash_key)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import overload

import torch
from torch.utils._pytree import register_dataclass

from polymodal.modalities.base import hash_key, present_key

HALF = (torch.float16, torch.bfloat16)


@overload
def full(t: torch.Tensor) -> torch.Tensor: ...
@overload
def full(t: None) -> None: ...
def full(t: torch.Tensor | None) -> torch.Tensor | None:
    """A half-precision tensor as float32; any other (float64 included) as it is."""
    return t.float() if t is not None and t.dtype in HALF else t


def direction(anchor: str, modality: str) -> str:
    """The key of explicit negatives: rows of `anchor` scored against extra `modality` ones."""
    return f"{anchor}->{modality}"


def split_direction(key: str) -> tuple[str, str]:
    """(anchor, the negatives' modality) of a direction key."""
    anchor, sep, modality = key.partition("->")
    if not (sep and anchor and modality):
        raise ValueError(f"negatives are keyed 'anchor->modality', got {key!r}")
    return anchor, modality


def negatives_key(key: str) -> str:
    """The decoded-batch keys of a direction's negatives' inputs and presence flags: they
    never have a `_present` twin, so from_dict takes neither for a modality."""
    return f"negatives/{key}"


def negatives_present_key(key: str) -> str:
    return f"negatives_present/{key}"


def negatives_hash_key(key: str) -> str:
    """Content hashes of a direction's negatives [n, K] (decoded with the rows' hashes)."""
    return f"negatives_hash/{key}"


def reference_key(role: str, name: str) -> str:
    """Batch.reference's key of a frozen reference model's embeddings (role "teacher" or
    "guide") of a modality's rows, or of a direction's negatives."""
    return f"{role}/{name}"


@dataclass(kw_only=True)
class Batch:
    """Rows of a step: model inputs, presence flags and (for evaluation and text positives)
    content hashes per modality, labels (-1: none) and, when logged, the rows' sample keys.

    Explicit (mined hard) negatives, keyed by direction ("text->image"): each row's K extra
    inputs of the modality after the arrow [B, K, ...its inputs' shape], and which of them
    exist [B, K] (rows may hold fewer than K). objectives.pairwise.info_nce shares them.

    Reference embeddings (train/references.py), keyed reference_key(role, modality or
    direction): a frozen model's embeddings of the rows [B, D_ref] (of the negatives
    [B, K, D_ref]) and which exist, for the terms that read them (distill, the guide).
    """

    inputs: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    hashes: dict[str, torch.Tensor] = field(default_factory=dict)
    label: torch.Tensor
    sample: torch.Tensor | None = None
    source: torch.Tensor | None = None  # each row's source (data.sources), when read so
    negatives: dict[str, torch.Tensor] = field(default_factory=dict)
    negatives_present: dict[str, torch.Tensor] = field(default_factory=dict)
    negatives_hashes: dict[str, torch.Tensor] = field(default_factory=dict)
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_present: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, torch.Tensor]) -> Batch:
        """From the decoded-batch dict: `m`, `m_present`, optional `m_hash`, `label`, and an
        optional `sample` and `source`, and negatives (negatives_key, negatives_present_key);
        the modalities are the keys that have a `_present` twin."""
        mods = [m for m in d if present_key(m) in d]
        prefix = negatives_key("")
        directions = [k[len(prefix) :] for k in d if k.startswith(prefix)]
        return cls(
            inputs={m: d[m] for m in mods},
            present={m: d[present_key(m)] for m in mods},
            hashes={m: d[hash_key(m)] for m in mods if hash_key(m) in d},
            label=d["label"],
            sample=d.get("sample"),
            source=d.get("source"),
            negatives={k: d[negatives_key(k)] for k in directions},
            negatives_present={k: d[negatives_present_key(k)] for k in directions},
            negatives_hashes={
                k: d[negatives_hash_key(k)] for k in directions if negatives_hash_key(k) in d
            },
        )

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    @property
    def size(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def slice(self, rows: slice) -> Batch:
        """The rows `rows` of every tensor (the gradient cache's sub-batches)."""
        return self._map(lambda t: t[rows])

    def _map(self, fn) -> Batch:
        return Batch(
            inputs={m: fn(t) for m, t in self.inputs.items()},
            present={m: fn(t) for m, t in self.present.items()},
            hashes={m: fn(t) for m, t in self.hashes.items()},
            label=fn(self.label),
            sample=None if self.sample is None else fn(self.sample),
            source=None if self.source is None else fn(self.source),
            negatives={k: fn(t) for k, t in self.negatives.items()},
            negatives_present={k: fn(t) for k, t in self.negatives_present.items()},
            negatives_hashes={k: fn(t) for k, t in self.negatives_hashes.items()},
            reference={k: fn(t) for k, t in self.reference.items()},
            reference_present={k: fn(t) for k, t in self.reference_present.items()},
        )


@dataclass(kw_only=True)
class ModelOutput:
    """What JointModel.forward gives the objective: L2-normalised embeddings and the presence
    flags they go with, the contrastive scale (exp'd) and bias, the learned loss log-variances,
    the decoders' reconstructions, the classifier's logits (None without a classifier) and the
    batch's explicit negatives, embedded (direction -> [B, K, D], zeros where absent)."""

    embeddings: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None = None
    loss_log_vars: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstructions: dict[str, torch.Tensor] = field(default_factory=dict)
    class_logits: torch.Tensor | None = None
    negatives: dict[str, torch.Tensor] = field(default_factory=dict)
    fusion_logits: torch.Tensor | None = None  # the fusion head's answers (towers/fusion.py)

    def full_precision(self) -> ModelOutput:
        """The outputs of an autocast forward with half-precision tensors in float32, so
        that the losses sum in full precision."""
        return dataclasses.replace(
            self,
            embeddings={m: full(v) for m, v in self.embeddings.items()},
            reconstructions={m: full(v) for m, v in self.reconstructions.items()},
            class_logits=full(self.class_logits),
            fusion_logits=full(self.fusion_logits),
            negatives={k: full(v) for k, v in self.negatives.items()},
        )


# DDP flattens a forward's output with pytree to route every tensor through its sink (so with
# find_unused_parameters an output the loss leaves unused is handled); unregistered, a
# dataclass would be one opaque leaf.
register_dataclass(ModelOutput)
