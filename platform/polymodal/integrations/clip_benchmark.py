"""CLIP_benchmark's zero-shot classification and retrieval of a polymodal model on a dataset in
its webdataset layout, computed as clip_benchmark computes them, written in its result JSON.

`python -m polymodal.integrations.clip_benchmark eval ...` is clip_benchmark's own CLI with its
top-k accuracy made to run under numpy >= 2.4 (1.6.2 calls float() on a 1-element array).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.data.clip_benchmark import Layout, Sample, read_layout
from polymodal.evaluation.evaluate import zero_shot_prototypes
from polymodal.inference.model import LoadedModel

RECALL_KS = (1, 5, 10)


def _batches(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _image_embeddings(model: LoadedModel, batch: list[Sample]) -> torch.Tensor:
    return torch.from_numpy(model.embed("image", [s.image for s in batch]))


def classification(model: LoadedModel, layout: Layout, split: str, batch_size: int) -> dict:
    """acc1, acc5 (NaN under 5 classes) and mean per-class recall, with clip_benchmark's
    classifier: each class's template embeddings normalised, averaged and renormalised."""
    from sklearn.metrics import balanced_accuracy_score

    protos = zero_shot_prototypes(
        model.model, layout.classnames, layout.templates, model.prep, model.device
    ).cpu()
    logits, labels = [], []
    for batch in _batches(layout.samples(split), batch_size):
        logits.append(_image_embeddings(model, batch) @ protos.t())
        labels += [s.label for s in batch]
    if not labels:
        raise ValueError(f"{layout.root}: split {split!r} has no samples")
    scores, target = torch.cat(logits), torch.tensor(labels)
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return {
        "acc1": float(hit[:, 0].float().mean()),
        "acc5": float(hit.any(1).float().mean()) if scores.shape[1] >= 5 else math.nan,
        "mean_per_class_recall": float(balanced_accuracy_score(target, top[:, 0])),
    }


def retrieval(
    model: LoadedModel, layout: Layout, split: str, batch_size: int, ks=RECALL_KS
) -> dict:
    """image_retrieval_recall@k: captions whose image is in their top k images;
    text_retrieval_recall@k: images with one of their captions in their top k captions."""
    images: list[torch.Tensor] = []
    texts: list[str] = []
    owner: list[int] = []
    seen = 0  # samples before this batch: a caption's image is its sample's number
    for batch in _batches(layout.samples(split), batch_size):
        for i, sample in enumerate(batch):
            owner += [seen + i] * len(sample.captions or [])
            texts += sample.captions or []
        seen += len(batch)
        images.append(_image_embeddings(model, batch))
    image_emb = torch.cat(images)
    text_emb = torch.cat(
        [
            torch.from_numpy(model.embed("text", texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
    )
    scores = F.normalize(text_emb, dim=-1) @ F.normalize(image_emb, dim=-1).t()
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(texts)), torch.tensor(owner)] = True
    metrics = {}
    for k in ks:
        by_text = scores.topk(min(k, scores.shape[1]), dim=1).indices
        by_image = scores.t().topk(min(k, scores.shape[0]), dim=1).indices
        metrics[f"image_retrieval_recall@{k}"] = float(
            positive.gather(1, by_text).any(1).float().mean()
        )
        metrics[f"text_retrieval_recall@{k}"] = float(
            positive.t().gather(1, by_image).any(1).float().mean()
        )
    return metrics


def evaluate_layout(
    model: LoadedModel, root: str, split: str = "test", batch_size: int = 256, label: str = ""
) -> dict:
    """clip_benchmark's result JSON for the dataset at root (its dataset_type.txt decides the
    task)."""
    layout = read_layout(root)
    missing = {"image", "text"} - set(model.prep.modalities)
    if missing:
        raise ValueError(f"CLIP_benchmark needs image and text encoders; the model lacks {missing}")
    score = classification if layout.kind == "zeroshot_classification" else retrieval
    return {
        "dataset": layout.name,
        "model": label,
        "pretrained": label,
        "task": layout.kind,
        "metrics": score(model, layout, split, batch_size),
        "language": "en",
    }


def main_score(result: dict) -> float:
    """acc1 for classification; the mean of the recall@5s for retrieval."""
    m = result["metrics"]
    if "acc1" in m:
        return float(m["acc1"])
    return float(np.mean([m["image_retrieval_recall@5"], m["text_retrieval_recall@5"]]))


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]


def main() -> None:
    """clip_benchmark's CLI, its zero-shot accuracy patched (see the module docstring)."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    zeroshot_classification.accuracy = _accuracy
    sys.argv[0] = "clip_benchmark"
    cli.main()


if __name__ == "__main__":
    main()
