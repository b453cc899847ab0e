"""LiT with a locked image tower, against the same run without the frozen-feature table:

  epochs      seconds of epoch 1 (the tower runs and fills the table) and epoch 2 (reads it),
              and epoch 2 with train.cache_frozen_features=false (the tower runs again);
              target: epoch 2 / epoch 1 well under 1, and faster than without the table
  memory      peak RSS of the training workers at 1x and 10x the train rows, each size in a
              fresh process and a fresh table (target 10x/1x <= 1.2: the table is on disk)

EfficientNet-Lite0 (ImageNet, frozen) on Fashion-MNIST at 64 px, with the small byte text
tower trained from scratch; contrastive + classification, 2 workers, 2 epochs.
Run: .venv/bin/python benchmarks/lit.py [--small 6000] [--image-size 64]
Needs Fashion-MNIST (make demo ingests it to data/fashion-mnist; this script does if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from pathlib import Path

from data import largest, run_child, watch_rss  # benchmarks/data.py

REPO = Path(__file__).resolve().parents[1]


def two_epochs(path: str, runs: str, image_size: int, *extra: str) -> dict:
    """In this (fresh) process: two epochs; each epoch's seconds and the workers' peak RSS."""
    from polymodal.checkpoint import read_meta
    from polymodal.config import load_config
    from polymodal.train.run import fit

    cfg = load_config(
        REPO / "jobs/configs/fashion.yaml",
        [
            f"data.path={path}",
            f"data.image_size={image_size}",
            "data.cache_val_rows=0",
            "model.image.encoder=efficientnet_lite0",
            "model.image.tuning=freeze",
            "objective.weights.reconstruction=0",
            f"train.storage_path={runs}",
            f"train.feature_cache_dir={runs}/features",
            "train.name=lit",
            "train.epochs=2",
            *extra,
        ],
    )
    workers: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rss, args=("RayTrainWorker", stop, workers))
    watcher.start()
    result = fit(cfg)
    stop.set()
    watcher.join()
    run_dir = Path(result.run_dir)
    found = run_dir.glob("checkpoint_*/polymodal.json")
    metas = sorted((read_meta(p.parent) for p in found), key=lambda m: m.epoch)
    rows = cfg.train.batch_size * metas[0].step  # rows trained in epoch 1 (drop_last)
    seconds = [rows / m.metrics["train/samples_per_s"] for m in metas]
    return {
        "epoch_seconds": [round(s, 1) for s in seconds],
        "worker_peak_rss_mb": largest(workers, "VmHWM"),
        "worker_peak_private_mb": largest(workers, "RssAnon"),
        "val_accuracy": metas[-1].metrics.get("val/accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "data/fashion-mnist"))
    parser.add_argument("--small", type=int, default=6_000, help="train rows of the 1x dataset")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, runs, size, *extra = args.child
        print(json.dumps(two_epochs(path, runs, int(size), *extra)))
        return

    from polymodal.data.ingest import ingest

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        if not Path(args.data, "manifest.json").is_file():
            ingest("builtin:fashion-mnist", args.data, progress=False)
        small = os.path.join(tmp, "small")
        ingest("builtin:fashion-mnist", small, limit=args.small, progress=False)
        size = args.image_size
        one = run_child(__file__, small, os.path.join(tmp, "runs-1x"), str(size))
        off = run_child(
            __file__,
            small,
            os.path.join(tmp, "runs-off"),
            str(size),
            "train.cache_frozen_features=false",
        )
        ten = run_child(__file__, args.data, os.path.join(tmp, "runs-10x"), str(size))
        e1, e2 = one["epoch_seconds"]
        print(
            json.dumps(
                {
                    "case": "epochs",
                    "train_rows": args.small,
                    "image_size": size,
                    "epoch_seconds": one["epoch_seconds"],
                    "epoch2_over_epoch1": round(e2 / e1, 3),
                    "without_table_epoch_seconds": off["epoch_seconds"],
                    "epoch2_speedup_vs_without": round(off["epoch_seconds"][1] / e2, 2),
                    "val_accuracy": [one["val_accuracy"], off["val_accuracy"]],
                    "target": "epoch2/epoch1 well under 1; faster than without the table",
                }
            ),
            flush=True,
        )
        print(
            json.dumps(
                {
                    "case": "memory",
                    "train_rows": [args.small, 60_000],
                    "epoch_seconds_10x": ten["epoch_seconds"],
                    "worker_peak_rss_mb": [one["worker_peak_rss_mb"], ten["worker_peak_rss_mb"]],
                    "worker_peak_private_mb": [
                        one["worker_peak_private_mb"],
                        ten["worker_peak_private_mb"],
                    ],
                    "ratio_10x_over_1x": round(
                        ten["worker_peak_private_mb"] / max(one["worker_peak_private_mb"], 1), 3
                    ),
                    "target": "<= 1.2",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
