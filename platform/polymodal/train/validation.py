"""Rank 0's validation inside training: the val split (decoded again each epoch, or kept when
small), its val/ metrics, the int8 calibration ranges of the served embeddings, and the
val-loss rows of the loss-curve history."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from polymodal.batch import Batch
from polymodal.checkpoint import RunMeta
from polymodal.config import Config
from polymodal.evaluation.evaluate import evaluate
from polymodal.models.joint import JointModel
from polymodal.objectives.contrastive import matryoshka_dims
from polymodal.retrieval.quantize import calibration
from polymodal.retrieval.vectors import trained_sizes


class ValBatches:
    """Rank 0's val split, decoded again each epoch, or once and kept when it is small."""

    def __init__(self, shard, batch_size: int, keep: bool, attach: Callable | None = None):
        self.shard, self.batch_size, self.keep = shard, batch_size, keep
        self.kept: list[Batch] | None = None
        self.attach = attach  # adds the reference models' embeddings (references.py)

    def batches(self) -> Iterable[Batch]:
        if self.kept is not None:
            return self.kept
        raw = self.shard.iter_torch_batches(batch_size=self.batch_size)
        batches: Iterable[Batch] = map(Batch.from_dict, raw)
        if self.attach is not None:
            batches = map(self.attach, batches)
        if self.keep:
            self.kept = batches = list(batches)
        return batches


def validate(
    model: JointModel,
    val: ValBatches,
    cfg: Config,
    meta: RunMeta,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, list[list[float]]]]:
    """(val/ metrics, int8 ranges of the served embeddings: every modality's val rows, each
    servable size; empty when no row has an embedding)."""
    ranges: dict[str, list[list[float]]] = {}

    def calibrate(emb: dict, present: dict) -> None:
        rows = [emb[m][present[m] > 0] for m in emb]
        if sum(len(r) for r in rows):
            sizes = trained_sizes(cfg.model.embed_dim, matryoshka_dims(cfg))
            ranges.update(calibration(torch.cat(rows).numpy(), sizes))

    metrics = evaluate(
        model,
        val.batches(),
        meta.prep,
        cfg,
        label_names=meta.label_names,
        templates=meta.zero_shot_templates,
        device=device,
        on_embeddings=calibrate,
    )
    return metrics, ranges


def val_losses(step: int, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """A row of the loss curves' history: the val/loss* metrics at `step`."""
    return {
        "step": step,
        "epoch": epoch,
        **{k: v for k, v in metrics.items() if k.startswith("val/loss")},
    }
