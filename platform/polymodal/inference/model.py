"""Finding and loading checkpoints (for the service and batch jobs); embedding and classifying
raw values with the exact preprocessing of training (read from each checkpoint's polymodal.json)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from polymodal.checkpoint import META, fetch_checkpoint, load_model, read_meta
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.joint import JointModel
from polymodal.objectives.contrastive import matryoshka_dims
from polymodal.objectives.fusion import FUSION
from polymodal.retrieval.vectors import trained_sizes


def model_card(uri: str) -> dict:
    meta = read_meta(fetch_checkpoint(uri, (META,)))
    cfg, prep = meta.run_config(checked=False), meta.prep
    full = cfg.model.embed_dim
    return {
        "modalities": prep.modalities,
        "dimension": full,
        "dimensions": trained_sizes(full, matryoshka_dims(cfg)),
        # int8/uint8 ranges per size, from the val embeddings (training writes them).
        "calibration": {int(d): np.asarray(r, np.float32) for d, r in meta.calibration.items()},
        "labels": meta.label_names or [],
        "prep": prep,  # what requests are checked against
        # A fusion model answers from all of these at once (/v1/classify needs each).
        "answers_from": FUSION.settings(cfg).modalities if FUSION.active(cfg) else [],
    }


@dataclass
class LoadedModel:
    model: JointModel
    prep: Preprocessing
    labels: list[str]
    device: torch.device

    @classmethod
    def load(cls, uri: str) -> LoadedModel:
        """On the GPU when the replica has one (Ray sets CUDA_VISIBLE_DEVICES)."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, meta = load_model(fetch_checkpoint(uri), device)
        return cls(model, meta.prep, meta.label_names or [], device)

    def inputs(self, modality: str, values: list) -> torch.Tensor:
        spec = MODALITIES[modality]
        decode = spec.serve_decode or spec.decode
        arr = np.stack([decode(v, self.prep) for v in values])
        return torch.from_numpy(arr).to(self.device)

    @torch.no_grad()
    def warm_up(self) -> None:
        """A full-size forward per modality: the first request pays no one-off set-up."""
        for m in self.prep.modalities:
            shape, dtype = MODALITIES[m].input_shape(self.prep)
            self.model.embed(m, torch.from_numpy(np.ones((2, *shape), dtype)).to(self.device))

    @torch.no_grad()
    def embed(self, modality: str, values: list) -> np.ndarray:
        return self.model.embed(modality, self.inputs(modality, values)).float().cpu().numpy()

    @torch.no_grad()
    def classify(self, values: dict[str, object]) -> dict[str, float]:
        """The class (or, for a fusion model, answer) probabilities of one example."""
        if self.model.fusion is not None:
            logits = self.model.answer({m: self.inputs(m, [values[m]]) for m in values})
            probs = torch.softmax(logits, dim=-1)[0].float().cpu()
            return {name: float(p) for name, p in zip(self.labels, probs)}
        emb = {m: self.model.embed(m, self.inputs(m, [v])) for m, v in values.items()}
        present = {
            m: torch.ones(1, device=self.device) if m in emb else torch.zeros(1, device=self.device)
            for m in self.model.modalities
        }
        full = {
            m: emb.get(m, torch.zeros(1, self.model.embed_dim, device=self.device))
            for m in self.model.modalities
        }
        probs = torch.softmax(self.model.classify(full, present), dim=-1)[0].float().cpu()
        return {name: float(p) for name, p in zip(self.labels, probs)}
