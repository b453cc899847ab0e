"""Run a JointModel over a split and compute the val/ metrics (docs/architecture.md, Metric names).

Plain torch: Batches come from Ray Data inside training, or straight from Parquet in
`polymodal eval` (decoded_batches); both are decoded by data.decode.decode_columns.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.batch import Batch
from polymodal.config import Config
from polymodal.data.dataset import iter_tables
from polymodal.data.decode import decode_columns
from polymodal.data.format import Manifest, read_columns, read_manifest
from polymodal.evaluation.retrieval import class_recall_at_k, recall_at_k
from polymodal.modalities import Preprocessing
from polymodal.modalities.text import encode_text
from polymodal.models.joint import JointModel
from polymodal.objectives.classification import classified
from polymodal.objectives.contrastive import matryoshka_dims
from polymodal.objectives.gather import single_process
from polymodal.objectives.joint import joint_loss


def decoded_batches(
    path: str,
    split: str,
    prep: Preprocessing,
    batch_size: int = 512,
    manifest: Manifest | None = None,
) -> Iterator[Batch]:
    """Ray-free batches of one split with content hashes, for evaluation."""
    manifest = manifest or read_manifest(path)
    columns = read_columns(path, manifest, prep.modalities)
    for table in iter_tables(path, split, columns, batch_size, manifest):
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        arrays, _ = decode_columns(cols, prep, True, manifest.num_labels)
        yield Batch.from_dict({k: torch.from_numpy(v) for k, v in arrays.items()})


@torch.no_grad()
def zero_shot_prototypes(
    model: JointModel,
    label_names: list[str],
    templates: list[str],
    prep: Preprocessing,
    device: torch.device,
) -> torch.Tensor:
    """One normalised text embedding per class: the mean over prompt templates."""
    protos = []
    for name in label_names:
        ids = np.stack(
            [encode_text(t.format(name), prep.text_max_len, prep.text_tokenizer) for t in templates]
        )
        emb = model.embed("text", torch.from_numpy(ids).to(device))
        protos.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(protos)


@torch.no_grad()
def evaluate(
    model: JointModel,
    batches: Iterable[Batch],
    prep: Preprocessing,
    cfg: Config,
    *,
    losses: bool = True,
    label_names: list[str] | None = None,
    templates: list[str] | None = None,
    device: torch.device | str = "cpu",
    on_embeddings: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, float]:
    """val/ metrics: recall@K for each ordered modality pair (and Matryoshka size), accuracy,
    zero-shot with label_names and templates, and (losses) the objective's terms, with
    in-batch negatives. on_embeddings(embeddings, present) sees every val embedding by
    modality (calibration)."""
    model.eval()
    device = torch.device(device)
    eval_cfg = cfg.eval
    emb_parts: defaultdict[str, list[torch.Tensor]] = defaultdict(list)
    present_parts: defaultdict[str, list[torch.Tensor]] = defaultdict(list)
    hash_parts: defaultdict[str, list[torch.Tensor]] = defaultdict(list)
    labels, preds, sources, answers, answerable = [], [], [], [], []
    loss_sums: dict[str, float] = defaultdict(float)
    n_batches = 0
    for batch in batches:
        batch = batch.to(device)
        out = model(batch)
        for m in model.modalities:
            emb_parts[m].append(out.embeddings[m].float().cpu())
            present_parts[m].append(batch.present[m].cpu())
            hash_parts[m].append(batch.hashes[m].cpu())
        labels.append(batch.label.cpu())
        if batch.source is not None:
            sources.append(batch.source.cpu())
        if out.class_logits is not None:
            preds.append(out.class_logits.argmax(-1).cpu())
        if out.fusion_logits is not None and model.fusion is not None:
            answers.append(out.fusion_logits.argmax(-1).cpu())
            fused = list(model.fusion.inputs)
            answerable.append(classified(batch.label, batch.present, fused, every=True).cpu())
        if losses:
            with single_process():
                total, logs = joint_loss(out, batch, cfg)
            loss_sums["loss"] += float(total)
            for name, value in logs.items():
                loss_sums[f"loss/{name}"] += float(value)
        n_batches += 1
    if n_batches == 0:
        raise ValueError("evaluation got no batches: is the split empty?")
    emb, present, hashes = (
        {m: torch.cat(v) for m, v in d.items()} for d in (emb_parts, present_parts, hash_parts)
    )
    label = torch.cat(labels)
    if on_embeddings is not None:
        on_embeddings(emb, present)
    metrics: dict[str, float] = {f"val/{k}": v / n_batches for k, v in loss_sums.items()}

    # Matryoshka sizes: the same recalls over each renormalised prefix (suffix /dim<d>).
    dims = [None, *matryoshka_dims(cfg)]
    # Several sources: the recalls over all val rows, and over each source's alone.
    groups: dict[str, torch.Tensor | None] = {"val/": None}
    names = [s.named() for s in cfg.data.sources]
    if sources and len(names) > 1:
        source = torch.cat(sources)
        groups |= {f"val/{name}/": source == k for k, name in enumerate(names)}
    for prefix, rows in groups.items():
        for a, b in itertools.permutations(model.modalities, 2):
            both = (present[a] > 0) & (present[b] > 0)
            if rows is not None:
                both &= rows
            if not both.any():  # no row pairs them (sources that never do): nothing to measure
                continue
            for d in dims:
                suffix = "" if d is None else f"/dim{d}"
                recalls = recall_at_k(
                    F.normalize(emb[a][both][:, :d], dim=-1),
                    F.normalize(emb[b][both][:, :d], dim=-1),
                    hashes[b][both],
                    eval_cfg.recall_ks,
                    eval_cfg.chunk_size,
                )
                metrics.update(
                    {f"{prefix}recall@{k}/{a}->{b}{suffix}": r for k, r in recalls.items()}
                )
            # The class's hit: what binding is judged by where a class is one recording.
            classed = both & (label >= 0)
            if classed.any():
                recalls = class_recall_at_k(
                    emb[a][classed],
                    emb[b][classed],
                    hashes[b][classed],
                    label[classed],
                    eval_cfg.recall_ks,
                )
                metrics.update(
                    {f"{prefix}class_recall@{k}/{a}->{b}": r for k, r in recalls.items()}
                )

    labelled = label >= 0
    rows = classified(label, present, model.classify_modalities) if preds else labelled
    if preds and rows.any():
        correct = torch.cat(preds)[rows] == label[rows]
        metrics["val/accuracy"] = float(correct.float().mean())
    rows = torch.cat(answerable) if answers else labelled
    if answers and rows.any():  # the fusion head's answers
        correct = torch.cat(answers)[rows] == label[rows]
        metrics["val/answer_accuracy"] = float(correct.float().mean())
    if label_names and templates and "text" in model.modalities and "image" in model.modalities:
        rows = labelled & (present["image"] > 0)
        if rows.any():
            protos = zero_shot_prototypes(model, label_names, templates, prep, device).cpu()
            pred = (emb["image"][rows] @ protos.t()).argmax(-1)
            metrics["val/zero_shot_accuracy"] = float((pred == label[rows]).float().mean())
    return metrics
