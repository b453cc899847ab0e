"""The data path at scale, against baselines measured in this run. One JSON line per case:

  loader      rows/s delivered to a consumer by polymodal's Ray Data pipeline vs a plain
              torch DataLoader (num_workers=2) reading the same Parquet shards with pyarrow
              and the same decoding, on the same 2 CPUs (target ratio >= 1.0)
  data_wait   train/data_wait_fraction of jobs/configs/fashion.yaml's second epoch (< 5%)
  memory      peak RSS of the driver and of the training workers over two epochs of the
              dataset at 1x and 10x the train rows, the same val split in both (target
              10x/1x <= 1.1 for workers' private memory), each size in a fresh process,
              with the decoded train cache on (the default) and off

Run: .venv/bin/python benchmarks/data.py [--rows 20000] [--small 6000] [--cases loader,memory]
Needs Fashion-MNIST (make demo ingests it to data/fashion-mnist; this script does if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
BATCH = 256


def _shards(path: str, split: str) -> list[str]:
    from polymodal.data.format import read_manifest, shard_paths

    return shard_paths(path, read_manifest(path), split)


class ParquetRows(torch.utils.data.IterableDataset):
    """The baseline: an IterableDataset over Parquet shards, each DataLoader worker taking
    every num_workers-th shard, decoding batches with polymodal's own decode_columns."""

    def __init__(self, shards: list[str], prep_dict: dict):
        self.shards, self.prep_dict = shards, prep_dict

    def __iter__(self):
        import pyarrow.parquet as pq

        from polymodal.data.decode import decode_columns
        from polymodal.modalities import Preprocessing

        info = torch.utils.data.get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info else self.shards
        prep = Preprocessing(**self.prep_dict)
        for shard in mine:
            pf = pq.ParquetFile(shard)
            for batch in pf.iter_batches(
                batch_size=BATCH, columns=["id", "image", "text", "label"]
            ):
                cols = {n: batch.column(n).to_pylist() for n in batch.schema.names}
                arrays, _ = decode_columns(cols, prep)
                yield {k: torch.from_numpy(v) for k, v in arrays.items()}


def case_loader(path: str) -> dict:
    import ray

    from polymodal.data.pipeline import configure_ray_data, split_dataset
    from polymodal.modalities import Preprocessing

    prep = Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=48)
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(
        ParquetRows(_shards(path, "train"), prep.to_dict()), batch_size=None, num_workers=2
    )
    start = time.perf_counter()
    base_rows = sum(len(b["label"]) for b in loader)
    base_s = time.perf_counter() - start

    ray.init(num_cpus=2, include_dashboard=False)
    configure_ray_data(stall_timeout_s=300.0)
    ds = split_dataset(path, "train", prep)
    for _ in ds.limit(BATCH).iter_torch_batches(batch_size=BATCH):
        pass  # workers started before the clock, as the DataLoader's are cheap to start
    start = time.perf_counter()
    ray_rows = sum(len(b["label"]) for b in ds.iter_torch_batches(batch_size=BATCH))
    ray_s = time.perf_counter() - start
    ray.shutdown()
    return {
        "case": "loader",
        "rows": ray_rows,
        "dataloader_rows_per_s": round(base_rows / base_s),
        "pipeline_rows_per_s": round(ray_rows / ray_s),
        "ratio": round((ray_rows / ray_s) / (base_rows / base_s), 3),
        "target": ">= 1.0",
    }


def watch_rss(pattern: str, stop: threading.Event, peak: dict) -> None:
    """Peak memory (MB) of every process whose command line contains pattern, read from /proc
    until stop is set (Linux): VmHWM (all resident pages, including the shared object-store
    pages a Ray worker maps to read blocks) and the largest RssAnon seen (its own memory)."""
    while not stop.is_set():
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if pattern not in cmd:
                    continue
                status = (proc / "status").read_text()
            except OSError:  # the process ended meanwhile
                continue
            for line in status.splitlines():
                field, _, value = line.partition(":")
                if field in ("VmHWM", "RssAnon"):
                    key = (proc.name, field)
                    peak[key] = max(peak.get(key, 0.0), int(value.split()[0]) / 1024)
        stop.wait(0.2)


def largest(peak: dict, field: str) -> int:
    return round(max((v for (_, f), v in peak.items() if f == field), default=0.0))


def train_one_epoch(path: str, runs: str, *extra: str) -> dict:
    """In a fresh process: two epochs of fashion.yaml over `path`; peak RSS, and the second
    (steady-state) epoch's metrics."""
    import resource

    from polymodal.config import load_config
    from polymodal.train.run import fit

    cfg = load_config(
        REPO / "jobs/configs/fashion.yaml",
        [
            f"data.path={path}",
            f"train.storage_path={runs}",
            "train.name=bench",
            "train.epochs=2",
            *extra,
        ],
    )
    workers: dict[str, float] = {}  # each worker runs its own Ray Data executor too
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rss, args=("RayTrainWorker", stop, workers))
    watcher.start()
    try:
        result = fit(cfg)
    finally:  # a failed run must not leave the process waiting on its watcher
        stop.set()
        watcher.join()
    return {
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "worker_peak_rss_mb": largest(workers, "VmHWM"),
        "worker_peak_private_mb": largest(workers, "RssAnon"),
        "each_worker_private_mb": sorted(
            round(v) for (_, f), v in workers.items() if f == "RssAnon"
        ),
        "data_wait_fraction": result.metrics["train/data_wait_fraction"],
        "samples_per_s": result.metrics["train/samples_per_s"],
    }


def with_val_of(small: str, full: str) -> None:
    """Give the small dataset the full one's val split, so that only the train rows scale:
    rank 0's val metrics hold every val embedding, and grow with the val split by design."""
    shutil.rmtree(Path(small, "val"))
    shutil.copytree(Path(full, "val"), Path(small, "val"))
    manifest = json.loads(Path(small, "manifest.json").read_text())
    manifest["splits"]["val"] = json.loads(Path(full, "manifest.json").read_text())["splits"]["val"]
    Path(small, "manifest.json").write_text(json.dumps(manifest, indent=2))


def run_child(script: str, path: str, *args: str) -> dict:
    """`script --child path *args` in a fresh process (its peak memory is its own); the JSON
    line it printed last (workers' forwarded lines may come after it)."""
    out = subprocess.run(
        [sys.executable, script, "--child", path, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"training over {path} failed:\n{out.stderr[-3000:]}")
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "data/fashion-mnist"))
    parser.add_argument("--rows", type=int, default=20_000, help="rows for the loader case")
    parser.add_argument("--small", type=int, default=6_000, help="train rows of the 1x dataset")
    parser.add_argument("--cases", default="loader,data_wait,memory")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_one_epoch(*args.child)))
        return

    from polymodal.data.ingest import ingest

    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if not Path(args.data, "manifest.json").is_file():
            ingest("builtin:fashion-mnist", args.data, progress=False)
        if "loader" in cases:
            path = os.path.join(tmp, "loader")
            ingest(
                "builtin:fashion-mnist", path, limit=args.rows, rows_per_shard=2_500, progress=False
            )
            print(json.dumps(case_loader(path)), flush=True)
        if cases & {"data_wait", "memory"}:
            # Rank 0's decoded val cache grows with the val split (bounded by
            # data.cache_val_rows); off here so the memory case measures the streaming path.
            no_cache = "data.cache_val_rows=0"
            big = run_child(__file__, args.data, os.path.join(tmp, "runs-big"), no_cache)
            # and with the decoded train cache off: every epoch streamed through Ray Data
            off = (no_cache, "data.decode_cache_mb=0")
            big_off = run_child(__file__, args.data, os.path.join(tmp, "runs-big-off"), *off)
            if "data_wait" in cases:
                wait = {
                    "case": "data_wait",
                    "config": "jobs/configs/fashion.yaml",
                    "data_wait_fraction": round(big["data_wait_fraction"], 4),
                    "samples_per_s": round(big["samples_per_s"]),
                    "target": "< 0.05",
                }
                print(json.dumps(wait), flush=True)
            if "memory" in cases:
                small = os.path.join(tmp, "small")
                ingest("builtin:fashion-mnist", small, limit=args.small, progress=False)
                with_val_of(small, args.data)
                one = run_child(__file__, small, os.path.join(tmp, "runs-small"), no_cache)
                one_off = run_child(__file__, small, os.path.join(tmp, "runs-small-off"), *off)
                for cache, runs in (("on", (one, big)), ("off", (one_off, big_off))):
                    memory = {"case": "memory", "decoded_cache": cache}
                    memory["train_rows"] = [args.small, 60_000]
                    for key in (
                        "driver_peak_rss_mb",
                        "worker_peak_rss_mb",
                        "worker_peak_private_mb",
                    ):
                        part = key.rsplit("_", 1)[0]
                        memory[key] = [runs[0][key], runs[1][key]]
                        memory[f"{part}_ratio"] = round(runs[1][key] / max(runs[0][key], 1), 3)
                    # on: the cache's pages are the node's page cache, shared, at most
                    # data.decode_cache_mb; a worker's private memory stays flat either way
                    memory["target"] = "worker_peak_private ratio <= 1.1"
                    print(json.dumps(memory), flush=True)


if __name__ == "__main__":
    main()
