"""Closed-loop load on the embedding service through real HTTP, against the offline encoder
(the limit) and the same deployment with batching off, all measured in this run.

Run: .venv/bin/python benchmarks/serve.py [--quick] [--models demo,large]
Prints one JSON line per (model, route, concurrency, batching), one per offline limit, then one
line per target with its ratio. Models: the demo's architecture (jobs/configs/fashion.yaml) and
a larger one (ResNet-18 images, 4-layer text), with fresh weights (speed does not depend on
training). Clients send one item per request, as online callers do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "fashion.yaml"
CONCURRENCY = [1, 8, 32, 64]
MODELS = {
    "demo": [],
    "large": ["model.image.encoder=resnet18", "model.text.width=256", "model.text.layers=4"],
}


def _checkpoint(overrides: list[str], out: Path) -> Path:
    import torch

    from polymodal.checkpoint import save_checkpoint
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model

    cfg = load_config(str(CONFIG), overrides)
    prep = Preprocessing(
        list(cfg.model.modalities),
        image_size=cfg.data.image_size,
        text_max_len=cfg.data.text_max_len,
    )
    torch.manual_seed(0)
    model = build_model(cfg, prep, num_classes=10).eval()
    meta = {"config": cfg.to_dict(), "preprocessing": prep.to_dict(), "num_classes": 10}
    meta |= {"label_names": [str(i) for i in range(10)], "epoch": 0, "step": 0}
    return save_checkpoint(out / "bench", model, {**meta, "metrics": {}, "history": []})


def _inputs(size: int, n: int = 64) -> dict[str, list[str]]:
    """Distinct PNG data URIs and captions, so no layer can cache an answer."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
        images.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    texts = [f"a photo of item {i}, a kind of garment number {i * 7 % 13}" for i in range(n)]
    return {"image": images, "text": texts}


def offline_limit(checkpoint: Path, values: list, modality: str, batch: int, secs: float):
    """Items/s of decode + forward in batches of `batch`, in this process."""
    from polymodal.inference.model import LoadedModel
    from polymodal.serving.inputs import parse_item

    model = LoadedModel.load(str(checkpoint))
    raw = [parse_item(v, f"input[{i}]")[1] for i, v in enumerate(values)]
    rows = (raw * (batch // len(raw) + 1))[:batch]
    model.embed(modality, rows)  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < secs:
        model.embed(modality, rows)
        done += len(rows)
    return done / (time.perf_counter() - start)


async def _load(url: str, model: str, values: list, concurrency: int, secs: float, warm: float):
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + warm + secs
    record_from = time.perf_counter() + warm

    async def client(session, k: int) -> None:
        nonlocal errors
        i = k
        while (now := time.perf_counter()) < stop_at:
            body = {"model": model, "input": values[i % len(values)]}
            async with session.post(url, json=body) as resp:
                await resp.read()
                ok = resp.status == 200
            if now >= record_from:
                latencies.append(time.perf_counter() - now) if ok else None
                errors += not ok
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*[client(session, k) for k in range(concurrency)])
    lat = sorted(latencies)
    return {
        "requests_per_s": len(lat) / secs,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,large", help=f"of {sorted(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke check)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--embedder-cpus", type=float, default=1.0)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args()
    secs, warm = (1.5, 0.5) if args.quick else (6.0, 1.5)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch
    from ray import serve

    from polymodal.serving.app import build_app

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tmp = Path(tempfile.mkdtemp(prefix="pm-serve-bench-"))
    values = _inputs(size=28)
    targets = {}
    for name in args.models.split(","):
        checkpoint = _checkpoint(MODELS[name], tmp / name)
        # The offline limit gets the threads one embedder replica gets.
        torch.set_num_threads(max(1, int(args.embedder_cpus)))
        limit = {
            m: offline_limit(checkpoint, values[m], m, args.max_batch_size, secs) for m in values
        }
        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps({"model": name, "offline_items_per_s": limit}))
        results = {}
        for batching, batch in [("on", args.max_batch_size), ("off", 1)]:
            app = build_app(
                str(checkpoint),
                max_batch_size=batch,
                max_ongoing_requests=max(64, batch),
                max_queued_requests=1024,  # measure queueing, not load shedding
                num_cpus=args.embedder_cpus,
                batch_wait_timeout_s=args.batch_wait_ms / 1000,
                access_log=args.access_log,
            )
            serve.run(app, name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            for modality in values:
                for c in CONCURRENCY if batching == "on" else [32]:
                    r = asyncio.run(_load(url, checkpoint.name, values[modality], c, secs, warm))
                    results[(batching, modality, c)] = r
                    row = {"model": name, "batching": batching, "route": modality}
                    row |= {"concurrency": c, **{k: round(v, 2) for k, v in r.items()}}
                    print(json.dumps(row))
            serve.delete("bench")
        for m in values:
            served = results[("on", m, 32)]["requests_per_s"]
            at8 = results[("on", m, 8)]
            targets[f"{name} {m}: served c=32 / offline limit (>= 0.7)"] = served / limit[m]
            targets[f"{name} {m}: batching on / off at c=32 (>= 3)"] = (
                served / results[("off", m, 32)]["requests_per_s"]
            )
            targets[f"{name} {m}: p99 / p50 at c=8 (<= 2)"] = at8["p99_ms"] / at8["p50_ms"]
    serve.shutdown()
    ray.shutdown()
    for target, ratio in targets.items():
        print(json.dumps({"target": target, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
