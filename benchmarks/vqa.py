"""Fusion against what each modality alone can do, all trained the same way (same data, epochs,
optimiser, towers): the fusion head over both modalities, over the question alone ("blind"),
over the image alone, and the classifier over the rows' pooled embeddings. Prints JSON: val
accuracy overall and per question type, seconds per run.

.venv/bin/python benchmarks/vqa.py [--task shapes-vqa|fashion-records] [--rows N] [--epochs E]
    [--only fused ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # config, source, (query modality, context modality)
    "shapes-vqa": ("shapes-vqa.yaml", "builtin:shapes-vqa", ("text", "image")),
    "fashion-records": ("fashion-records.yaml", "builtin:fashion-records", ("vector", "image")),
}


def variants(query: str, context: str) -> dict[str, list[str]]:
    one = "objective.fusion.modalities"
    return {
        "fused": [],
        f"{query} only": [f"{one}=[{query}]"],
        f"{context} only": [f"{one}=[{context}]", f"objective.fusion.query={context}"],
        "pooled embeddings": [
            "objective.weights.fusion=0",
            "objective.weights.classification=1",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="shapes-vqa")
    parser.add_argument("--rows", type=int, help="rows ingested (default: the source's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    args = parser.parse_args()
    from polymodal.config import load_config
    from polymodal.data.ingest import ingest
    from polymodal.evaluation.run import evaluate_checkpoint
    from polymodal.train.run import fit

    config, source, (query, context) = TASKS[args.task]
    out = {"task": args.task, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / args.task
        ingest(source, data, limit=args.rows, progress=False)
        for name, overrides in variants(query, context).items():
            if args.only and name not in args.only:
                continue
            extra = [f"train.epochs={args.epochs}"] if args.epochs else []
            cfg = load_config(
                REPO / "jobs" / "configs" / config,
                [f"data.path={data}", f"train.storage_path={tmp}/runs"]
                + [f"train.name={name.replace(' ', '-')}", *extra, *args.set, *overrides],
            )
            start = time.perf_counter()
            result = fit(cfg)
            seconds = time.perf_counter() - start
            metrics = evaluate_checkpoint(result.checkpoint, str(data))
            overall = metrics.get("val/answer_accuracy", metrics.get("val/accuracy"))
            prefix = "val/answer_accuracy/"  # <type>, <condition>, <condition>/<type>
            by_type = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
            out["runs"][name] = {"accuracy": overall, "by_type": by_type, "seconds": seconds}
            print(json.dumps({name: out["runs"][name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
