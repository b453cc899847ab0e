"""Rank 0's evaluation suites inside training (eval.suites): val metrics, mteb tasks and
CLIP_benchmark datasets on the model as it stands after an epoch, as suite/<name>/ metrics."""

from __future__ import annotations

import time

import numpy as np
import torch

from polymodal.checkpoint import RunMeta
from polymodal.config import Config
from polymodal.inference.model import LoadedModel
from polymodal.models.joint import JointModel


def due(cfg: Config, epoch: int) -> list:
    return [s for s in cfg.eval.suites if epoch % s.every_epochs == 0 or epoch == cfg.train.epochs]


def run_suites(
    model: JointModel,
    meta: RunMeta,
    cfg: Config,
    epoch: int,
    device: torch.device,
    val_metrics: dict[str, float],
) -> dict[str, float]:
    """suite/<name>/main_score and suite/<name>/<task> of the suites due after `epoch`, and
    suite/<name>/seconds (what the suite cost training)."""
    out: dict[str, float] = {}
    suites = due(cfg, epoch)
    if not suites:
        return out
    model.eval()
    loaded = LoadedModel(model, meta.prep, meta.label_names or [], device)
    for suite in suites:
        start = time.monotonic()
        if suite.kind == "val":
            missing = [t for t in suite.tasks if t not in val_metrics]
            if missing:
                raise KeyError(f"eval.suites '{suite.name}': no {missing[0]} among val metrics")
            scores = {t: val_metrics[t] for t in suite.tasks}
        elif suite.kind == "mteb":
            from polymodal.integrations.mteb import evaluate_mteb, tasks_for

            tasks = tasks_for(
                suite.tasks, suite.path or meta.dataset, suite.split or "val",
                meta.zero_shot_templates,
            )  # fmt: skip
            prompts = {"query": cfg.eval.query_prompt, "document": cfg.eval.document_prompt}
            results = evaluate_mteb(loaded, cfg.train.name, f"epoch{epoch}", tasks, prompts)
            scores = {task: r["main_score"] for task, r in results.items()}
        else:
            from polymodal.integrations.clip_benchmark import evaluate_layout, main_score

            result = evaluate_layout(loaded, suite.path, suite.split or "test")
            scores = {result["dataset"]: main_score(result)}
        out |= {f"suite/{suite.name}/{task}": float(v) for task, v in scores.items()}
        out[f"suite/{suite.name}/main_score"] = float(np.mean(list(scores.values())))
        out[f"suite/{suite.name}/seconds"] = time.monotonic() - start
    return out
