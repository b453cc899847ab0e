"""JointModel: an encoder and projection per modality into one embedding space, optional
decoders (reconstruction), a learnable contrastive temperature, a fused classifier head and,
for learned loss weighting, one log-variance per objective term."""

from __future__ import annotations

import contextlib
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.batch import Batch, ModelOutput, split_direction


class JointModel(nn.Module):
    def __init__(
        self,
        encoders: dict[str, nn.Module],
        embed_dim: int,
        decoders: dict[str, nn.Module] | None = None,
        num_classes: int = 0,
        classifier_hidden: int = 256,
        classify_modalities: list[str] | None = None,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        logit_bias_init: float | None = None,
        learned_weight_terms: list[str] | None = None,
        fusion: dict | None = None,
    ):
        super().__init__()
        self.modalities = list(encoders)
        self.embed_dim = embed_dim
        self.encoders = nn.ModuleDict(encoders)
        # A tower that projects into the shared space itself (OpenCLIP's) keeps its own.
        self.projections = nn.ModuleDict(
            {
                m: nn.Identity() if _projects(enc, embed_dim) else nn.Linear(_width(enc), embed_dim)
                for m, enc in encoders.items()
            }
        )
        self.decoders = nn.ModuleDict(decoders or {})
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature_init)), requires_grad=learn_temperature
        )
        self.max_log_scale = math.log(max_logit_scale)
        self.logit_bias = None  # SigLIP's learnable bias, only for the sigmoid loss
        if logit_bias_init is not None:
            self.logit_bias = nn.Parameter(
                torch.tensor(float(logit_bias_init)), requires_grad=learn_temperature
            )
        # Log-variances s_i of the objective's terms, for uncertainty weighting (Kendall et
        # al. 2018); parameters like any other, so DDP keeps them identical on every rank.
        self.loss_log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(())) for t in learned_weight_terms or []}
        )
        # Modalities whose inputs are already their tower's features (train/features.py).
        self.precomputed: set[str] = set()
        self.classify_modalities = classify_modalities or self.modalities
        self.classifier = None
        if num_classes:
            self.classifier = nn.Sequential(
                nn.LayerNorm(embed_dim),
                nn.Linear(embed_dim, classifier_hidden),
                nn.GELU(),
                nn.Linear(classifier_hidden, num_classes),
            )
        # The fusion head over its modalities' token sequences (objectives/fusion.py).
        self.fusion = None
        if fusion:
            from polymodal.towers.fusion import FusionHead

            mods = fusion.pop("modalities")
            self.fusion = FusionHead({m: _width(encoders[m]) for m in mods}, **fusion)

    def logit_scale(self) -> torch.Tensor:
        """exp(learned log-scale), clamped at max_logit_scale (CLIP clamps at 100)."""
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

    def project(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) embedding of one modality."""
        features = x if modality in self.precomputed else self.encoders[modality](x)
        return self.projections[modality](features)

    @contextlib.contextmanager
    def using_features(self, modalities: set[str]):
        """Within: the inputs of `modalities` are their towers' features."""
        self.precomputed = set(modalities)
        try:
            yield self
        finally:
            self.precomputed = set()

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding, the one used for retrieval and serving."""
        return F.normalize(self.project(modality, x), dim=-1)

    def fuse(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean of the normalised embeddings of the modalities each row has."""
        total: torch.Tensor | float = 0.0
        count: torch.Tensor | float = 0.0
        for m in self.classify_modalities:
            mask = present[m].unsqueeze(-1)
            total = total + embeddings[m] * mask
            count = count + mask
        assert isinstance(count, torch.Tensor), "no modality to classify from"
        return total / torch.clamp(count, min=1.0)

    def classify(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this model has no classifier head (no labels or weight 0)")
        return self.classifier(self.fuse(embeddings, present))

    def project_present(
        self, modality: str, x: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Raw embeddings of the rows that hold `modality`, zeros for the others: a tower
        neither spends compute on missing rows nor takes their zeros into its BatchNorm
        statistics. With none present it still runs on one row, in eval mode (statistics
        untouched) and times zero: every tower is in every step's graph, as DDP and FSDP need."""
        if bool(present.all()):
            return self.project(modality, x)
        rows = present.nonzero().squeeze(1)
        if rows.numel() == 0:
            encoder, training = self.encoders[modality], self.encoders[modality].training
            encoder.train(False)
            try:
                z = self.project(modality, x[:1])
            finally:
                encoder.train(training)
            return z.new_zeros((x.shape[0], z.shape[1])) + 0 * z.sum()
        z = self.project(modality, x[rows])
        return z.new_zeros((x.shape[0], z.shape[1])).index_copy(0, rows, z)

    def encode_with_negatives(
        self, modality: str, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Raw embeddings of a modality's rows and of the batch's explicit negatives of that
        modality (direction -> [B, K, D]). Rows and negatives go through the tower in one
        call: a BatchNorm's statistics then cannot tell negatives from positives. With the
        modality precomputed, rows and negatives alike are its tower's features."""
        x, present = batch.inputs[modality], batch.present[modality]
        keys = [k for k in batch.negatives if split_direction(k)[1] == modality]
        if not keys:
            return self.project_present(modality, x, present), {}
        negatives = [batch.negatives[k].flatten(0, 1) for k in keys]
        flags = [batch.negatives_present[k].flatten().to(present.dtype) for k in keys]
        z = self.project_present(modality, torch.cat([x, *negatives]), torch.cat([present, *flags]))
        own, *parts = z.split([x.shape[0]] + [n.shape[0] for n in negatives])
        return own, {k: p.unflatten(0, batch.negatives[k].shape[:2]) for k, p in zip(keys, parts)}

    def forward(self, batch: Batch) -> ModelOutput:
        unknown = [
            k for k in batch.negatives if not set(split_direction(k)) <= set(self.modalities)
        ]
        if unknown:
            raise ValueError(f"negatives {unknown} name a modality the model lacks")
        raw, negatives, tokens = {}, {}, {}
        for m in self.modalities:
            if self.fusion is not None and m in self.fusion.inputs:
                # One pass: the tokens for the fusion head, their pool for the embedding.
                tokens[m] = _tokens(self.encoders[m], batch.inputs[m])
                raw[m] = self.projections[m](_pool(self.encoders[m], tokens[m]))
                continue
            raw[m], mine = self.encode_with_negatives(m, batch)
            negatives.update({k: F.normalize(z, dim=-1) for k, z in mine.items()})
        emb = {m: F.normalize(z, dim=-1) for m, z in raw.items()}
        present = {m: batch.present[m] for m in self.modalities}
        return ModelOutput(
            embeddings=emb,
            present=present,
            logit_scale=self.logit_scale(),
            logit_bias=self.logit_bias,
            loss_log_vars=dict(self.loss_log_vars),
            reconstructions={m: dec(raw[m]) for m, dec in self.decoders.items()},
            class_logits=self.classify(emb, present) if self.classifier is not None else None,
            negatives=negatives,
            fusion_logits=self.fusion(tokens, present) if self.fusion is not None else None,
        )

    def answer(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion head's answer logits for inputs of each of its modalities."""
        if self.fusion is None:
            raise RuntimeError("this model has no fusion head")
        tokens = {m: _tokens(self.encoders[m], inputs[m]) for m in self.fusion.inputs}
        present = {m: t[0].new_ones(t[0].shape[0]) for m, t in tokens.items()}
        return self.fusion(tokens, present)


def _tokens(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tower's token sequence and mask (towers with a sequence: objectives/fusion.py)."""
    return cast(tuple[torch.Tensor, torch.Tensor], encoder.tokens(x))  # type: ignore[operator]


def _pool(encoder: nn.Module, tokens: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return cast(torch.Tensor, encoder.pool(*tokens))  # type: ignore[operator]


def _width(encoder: nn.Module) -> int:
    # torch types a module's unknown attributes as Tensor | Module; out_dim is a plain int that
    # every tower sets (modalities.base.Builder).
    return cast(int, encoder.out_dim)


def _projects(encoder: nn.Module, embed_dim: int) -> bool:
    if not getattr(encoder, "projects", False):
        return False
    if encoder.out_dim != embed_dim:
        raise ValueError(f"the tower projects to {encoder.out_dim}; model.embed_dim is {embed_dim}")
    return True
