"""The GPU check: a ViT-B/32 image tower (Hugging Face config, random weights, through
polymodal's hf tower) and a 12-layer, 512-wide text tower, trained one device, one process:

  precision      samples/s of a training step in fp32, bf16 and bf16 + torch.compile, with
                 the InfoNCE and the sigmoid loss (ratios against fp32, this run)
  largest_batch  the largest batch (doubling) a step fits in, plain, with the gradient cache
                 (64-row chunks) and with activation checkpointing of both towers, and the
                 peak memory at it (torch.cuda.max_memory_allocated)
  train_serve    the towers trained on digits (ingested here; --data another dataset) by a
                 bare loop over batches decoded once onto the device, and by `polymodal
                 train` (1 worker on the device, its second epoch; a dry run trains in
                 Train's local mode): samples/s and the ratio;
                 then the checkpoint served by a replica with num_gpus=1, answering image
                 embedding requests at concurrency 8 (items/s, median latency)
  serve          the ViT image tower and the real MiniLM text tower served by `polymodal
                 serve --num-gpus 1` under benchmarks/serve.py's loads (1 item at
                 concurrency 1, 8, 32; 32 items at 8), items/s over the offline encoder on
                 the same device, and seconds to the first embedding

Run: .venv/bin/python benchmarks/gpu.py [--cases precision,largest_batch,train_serve,serve]
     [--dry-run] [--data DIR]
Prints one JSON line per case. Without a CUDA device it refuses, except with --dry-run:
tiny towers on the CPU, a check (run by the tests) that the script still works.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FULL = {  # ViT-B/32 and a CLIP-sized text tower
    "vit": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "text": {"width": 512, "layers": 12, "heads": 8, "tokens": 77},
    "batch": 256,
    "max_batch": 65536,
    "train_batch": 64,  # digits has 1,617 train rows: 25 steps an epoch
    "train_workers": 1,
    "requests": 256,
}
DRY = {
    "vit": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "text": {"width": 32, "layers": 2, "heads": 2, "tokens": 16},
    "batch": 8,
    "max_batch": 16,
    "train_batch": 64,
    "train_workers": 0,  # Train's local mode: the loop in this process, no worker to start
    "requests": 16,
}


def _vit(out: Path, vit: dict) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(**vit)).save_pretrained(out)
    side = vit["image_size"]
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(out)
    return out


def _config(sizes: dict, vit_dir: Path, *extra: str):
    from polymodal.config import load_config

    text = sizes["text"]
    return load_config(
        None,
        [
            "model.image.encoder=hf",
            f"model.image.hf_model={vit_dir}",
            f"model.text.width={text['width']}",
            f"model.text.layers={text['layers']}",
            f"model.text.heads={text['heads']}",
            f"data.text_max_len={text['tokens']}",
            f"data.image_size={sizes['vit']['image_size']}",
            "data.image_channels=3",
            *extra,
        ],
    )


def _batch(n: int, cfg, device: torch.device):
    from polymodal.batch import Batch

    g = torch.Generator().manual_seed(n)
    side, tokens = cfg.data.image_size, cfg.data.text_max_len
    ids = torch.randint(1, 256, (n, tokens), generator=g)  # bytes + 1, as encode_text
    return Batch(
        inputs={"image": torch.rand(n, 3, side, side, generator=g), "text": ids},
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
    ).to(device)


def _step(cfg, device: torch.device, compiled: bool = False):
    """polymodal's own training step (the loop's, on one process: no DDP to wrap)."""
    from polymodal.modalities import MODALITIES, Preprocessing
    from polymodal.models.build import build_model, recompute_activations
    from polymodal.train.optim import build_optimizer, build_scheduler
    from polymodal.train.step import DDPStep, GradCacheStep, compile_towers

    torch.manual_seed(0)
    image = MODALITIES["image"].settings(cfg, None, None)  # the hf tower's: its processor's
    prep = Preprocessing(["image", "text"], **image, text_max_len=cfg.data.text_max_len)
    model = build_model(cfg, prep).to(device).train()
    recompute_activations(model, cfg)
    if compiled and (failed := compile_towers(model)):
        raise RuntimeError(f"torch.compile cannot build here: {failed}")
    optimizer = build_optimizer(model, cfg.optim)
    kind = GradCacheStep if cfg.train.grad_cache.chunk_size else DDPStep
    return kind(model, optimizer, build_scheduler(optimizer, cfg.optim, 10**6), cfg, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+compile", "bf16", True))


def case_precision(
    sizes: dict, vit_dir: Path, device: torch.device, steps: int, variants=VARIANTS
) -> list[dict]:
    rows = []
    for loss in ("infonce", "sigmoid"):
        speeds = {}
        for name, precision, compiled in variants:
            cfg = _config(
                sizes, vit_dir, f"objective.contrastive.kind={loss}", f"train.precision={precision}"
            )
            step, batch = _step(cfg, device, compiled), _batch(sizes["batch"], cfg, device)
            for _ in range(2):  # warm-up: allocations, autotuning, compilation
                step(batch)
            times = []
            for _ in range(steps):
                _sync(device)
                start = time.perf_counter()
                step(batch)
                _sync(device)
                times.append(time.perf_counter() - start)
            speeds[name] = sizes["batch"] / statistics.median(times)
        rows.append(
            {
                "case": "precision",
                "loss": loss,
                "batch": sizes["batch"],
                "samples_per_s": {k: round(v, 1) for k, v in speeds.items()},
                "vs_fp32": {k: round(v / speeds["fp32"], 3) for k, v in speeds.items()},
            }
        )
    return rows


def _peak_mb(cfg, device: torch.device, n: int) -> float | None:
    """Peak memory (MB; 0 on a CPU, which keeps no count) of two steps at batch n, or None
    when it runs out of memory."""
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = _step(cfg, device)
        for _ in range(2):
            step(_batch(n, cfg, device))
        _sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    except torch.OutOfMemoryError:
        return None


def case_largest_batch(sizes: dict, vit_dir: Path, device: torch.device) -> dict:
    variants = {
        "plain": [],
        "grad_cache": ["train.grad_cache.chunk_size=64"],
        "activation_checkpointing": [
            "model.image.activation_checkpointing=true",
            "model.text.activation_checkpointing=true",
        ],
    }
    out = {"case": "largest_batch", "precision": "bf16", "tried_up_to": sizes["max_batch"]}
    for name, extra in variants.items():
        cfg = _config(sizes, vit_dir, "train.precision=bf16", *extra)
        n, best, peak = sizes["batch"], None, None
        while n <= sizes["max_batch"]:
            used = _peak_mb(cfg, device, n)
            if used is None:
                break
            best, peak, n = n, used, n * 2
        out[name] = {"batch": best, "peak_mb": round(peak) if peak else None}
    return out


def _bare_loop(cfg, data: str, device: torch.device) -> float:
    """samples/s of polymodal's step over the train split's batches, decoded once and kept
    on the device (what a hand-written loop would do), for one epoch after a warm-up."""
    from polymodal.data.dataset import dataset_manifest, preprocessing_for
    from polymodal.evaluation.evaluate import decoded_batches

    manifest, size = dataset_manifest(cfg), cfg.train.batch_size
    prep = preprocessing_for(cfg, manifest)
    batches = decoded_batches(data, "train", prep, size, manifest)
    batches = [b.to(device) for b in batches if b.size == size]
    step = _step(cfg, device)
    for batch in batches[:2]:
        step(batch)
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    _sync(device)
    return len(batches) * size / (time.perf_counter() - start)


def _post(url: str, body: dict | None = None) -> tuple[float, dict]:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as answer:
        return time.perf_counter() - start, json.loads(answer.read())


def _served(checkpoint: str, device: torch.device, requests: int) -> dict:
    """The checkpoint behind `polymodal serve`'s app on the running cluster, one replica with
    the device; `requests` requests of one PNG each, 8 at a time."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image
    from ray import serve

    from polymodal.ports import free_port
    from polymodal.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    gpus = 1 if device.type == "cuda" else 0
    serve.run(build_app(checkpoint, num_gpus=gpus, num_cpus=1, access_log=False), name="gpu")
    url = f"http://127.0.0.1:{port}/v1"
    model = _post(f"{url}/models")[1]["data"][0]["id"]
    rng = np.random.default_rng(0)
    uris = []
    for _ in range(requests):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(png.getvalue()).decode())
    _post(f"{url}/embeddings", {"model": model, "input": uris[0]})  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda u: _post(f"{url}/embeddings", {"model": model, "input": u}), uris)
        )
    seconds = time.perf_counter() - start
    serve.shutdown()
    return {
        "num_gpus": gpus,
        "items_per_s": round(requests / seconds, 1),
        "median_latency_ms": round(1000 * statistics.median(a[0] for a in answers), 1),
        "answered": sum(len(a[1]["data"]) == 1 for a in answers),
    }


def case_serve(
    sizes: dict, vit_dir: Path, device: torch.device, secs: float, loads: list
) -> list[dict]:
    """The ViT image tower and the real MiniLM text tower in one checkpoint behind `polymodal
    serve` (its replica on the device), under benchmarks/serve.py's loads, against the offline
    encoder on the same device: items/s per load and their ratio to the offline limit."""
    import asyncio
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import serve as bench
    from benchmarks.peer import english

    with tempfile.TemporaryDirectory() as tmp:
        frozen = ["model.text.encoder=minilm", "model.text.tuning=freeze"]
        cfg = _config(sizes, vit_dir, *frozen, "data.text_max_len=128")
        checkpoint = bench.fresh_checkpoint(cfg, Path(tmp))
        values = {"image": bench._inputs(sizes["vit"]["image_size"])["image"], "text": english()}
        limit = {m: bench.offline_limit(checkpoint, v, m, 32, secs) for m, v in values.items()}
        gpus = 1 if device.type == "cuda" else 0
        args = SimpleNamespace(max_batch_size=32, threads=2, num_gpus=gpus)
        proc, url, _ = bench._spawn("polymodal", checkpoint, args)
        try:
            first = bench._wait_first(url, checkpoint.name, values["text"][0], proc, 600)
            rows = []
            for m, v in values.items():
                for load in loads:
                    r = asyncio.run(bench._load(url, checkpoint.name, v, load, secs, secs / 4))
                    row = {"case": "serve", "num_gpus": gpus, "route": m, "load": load}
                    row |= {k: round(x, 2) for k, x in r.items()}
                    rows.append(row | {"over_offline": round(r["items_per_s"] / limit[m], 3)})
        finally:
            bench._stop(proc)
    head = {"case": "serve", "first_embedding_s": round(first, 2)}
    return [head | {"offline_items_per_s": {m: round(x, 1) for m, x in limit.items()}}, *rows]


def case_train_serve(sizes: dict, vit_dir: Path, device: torch.device, data: str) -> dict:
    from polymodal.data.ingest import ingest
    from polymodal.train.run import fit

    with tempfile.TemporaryDirectory() as tmp:
        if not data:
            data = f"{tmp}/digits"
            ingest("builtin:digits", data, progress=False)
        cfg = _config(
            sizes,
            vit_dir,
            f"data.path={data}",
            f"train.batch_size={sizes['train_batch']}",
            "train.epochs=2",
            f"train.num_workers={sizes['train_workers']}",
            f"train.use_gpu={device.type == 'cuda'}",
            f"train.storage_path={tmp}/runs",
            "train.name=gpu",
        )
        bare = _bare_loop(cfg, data, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the worker's process takes the device next
        result = fit(cfg)
        ours = result.metrics["train/samples_per_s"]
        served = _served(result.checkpoint, device, sizes["requests"])
    return {
        "case": "train_serve",
        "precision": "auto",
        "batch": cfg.train.batch_size,
        "samples_per_s": {"bare_loop": round(bare, 1), "polymodal_train": round(ours, 1)},
        "ratio": round(ours / bare, 3),
        "serve": served,
    }


def bench_loads() -> list[tuple[int, int]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.serve import LOADS

    return LOADS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="precision,largest_batch,train_serve,serve")
    parser.add_argument("--data", default="", help="train_serve's dataset (default: digits)")
    parser.add_argument("--dry-run", action="store_true", help="tiny towers on the CPU")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.dry_run:
        device, sizes, steps = torch.device("cpu"), DRY, 2
    elif torch.cuda.is_available():
        device, sizes, steps = torch.device("cuda"), FULL, args.steps
    else:
        sys.exit("gpu.py: no CUDA device here; --dry-run checks the script on the CPU")
    cases = set(args.cases.split(","))
    header = {"case": "device", "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        header["name"] = torch.cuda.get_device_name(device)
    print(json.dumps(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        vit_dir = _vit(Path(tmp, "vit"), sizes["vit"])
        if "precision" in cases:
            # compiling takes minutes on a CPU; the unit tests cover it there
            variants = VARIANTS[:2] if args.dry_run else VARIANTS
            for row in case_precision(sizes, vit_dir, device, steps, variants):
                print(json.dumps(row), flush=True)
        if "largest_batch" in cases:
            print(json.dumps(case_largest_batch(sizes, vit_dir, device)), flush=True)
        if "train_serve" in cases:
            print(json.dumps(case_train_serve(sizes, vit_dir, device, args.data)), flush=True)
            import ray

            ray.shutdown()  # its cluster; `polymodal serve` below starts one of its own
        if "serve" in cases:
            # a dry run checks the script: the lightest and the heaviest load, briefly
            secs, loads = (0.75, bench_loads()[::3]) if args.dry_run else (6.0, bench_loads())
            for row in case_serve(sizes, vit_dir, device, secs, loads):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
