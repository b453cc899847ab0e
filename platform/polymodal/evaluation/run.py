"""`polymodal eval`: load a checkpoint, read a dataset split from Parquet, compute val/ metrics."""

from __future__ import annotations

import torch

from polymodal.checkpoint import fetch_checkpoint, load_model
from polymodal.data.format import read_manifest
from polymodal.evaluation.answers import accuracy_by_type, answered_rows
from polymodal.evaluation.evaluate import decoded_batches, evaluate


def evaluate_checkpoint(
    checkpoint: str, dataset: str | None = None, split: str = "val", device: str | None = None
) -> dict[str, float]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model(fetch_checkpoint(checkpoint), device)
    cfg, prep = meta.run_config(), meta.prep
    dataset = dataset or meta.dataset
    manifest = read_manifest(dataset)
    label_names = meta.label_names
    if manifest.label_names and label_names and manifest.label_names != label_names:
        raise ValueError(
            f"{dataset}: label names {manifest.label_names[:3]}... differ from the checkpoint's "
            f"{label_names[:3]}..."
        )
    batches = decoded_batches(dataset, split, prep, batch_size=cfg.eval.batch_size)
    metrics = evaluate(
        model,
        batches,
        prep,
        cfg,
        label_names=label_names,
        templates=meta.zero_shot_templates,
        device=device,
    )
    answers = model.fusion is not None or model.classifier is not None
    if answers and manifest.extra.get("question_types"):
        rows = answered_rows(model, dataset, split, prep, manifest, device=device)
        metrics |= accuracy_by_type(rows, manifest.extra.get("conditions", []))
    return metrics
