"""Rows/s of polymodal's Ray Data training pipeline against a plain pyarrow + decode loop.

Run: .venv/bin/python benchmarks/data_pipeline.py [--rows 20000] [--batch 256]
Prints one JSON line; `ratio` is Ray Data rows/s over the baseline's, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import ray

    from polymodal.data.decode import Preprocessing
    from polymodal.data.ingest import ingest
    from polymodal.data.pipeline import split_dataset
    from polymodal.evaluation.evaluate import decoded_batches

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fashion")
        ingest("builtin:fashion-mnist", path, limit=args.rows, rows_per_shard=5_000, progress=False)
        prep = Preprocessing(["image", "text"], 28, 1, 48)

        start = time.perf_counter()
        baseline_rows = sum(
            len(b["label"]) for b in decoded_batches(path, "train", prep, args.batch)
        )
        baseline_s = time.perf_counter() - start

        ray.init(num_cpus=2, include_dashboard=False)
        ds = split_dataset(path, "train", prep)
        start = time.perf_counter()
        ray_rows = sum(len(b["label"]) for b in ds.iter_torch_batches(batch_size=args.batch))
        ray_s = time.perf_counter() - start
        ray.shutdown()

    result = {
        "benchmark": "data_pipeline",
        "rows": ray_rows,
        "baseline_rows_per_s": round(baseline_rows / baseline_s),
        "ray_data_rows_per_s": round(ray_rows / ray_s),
        "ratio": round((ray_rows / ray_s) / (baseline_rows / baseline_s), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
