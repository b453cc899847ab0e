"""The GPU check: a ViT-B/32 image tower (Hugging Face config, random weights, through
polymodal's hf tower) and a 12-layer, 512-wide text tower, trained one device, one process:

  precision      samples/s of a training step in fp32, bf16 and bf16 + torch.compile, with
                 the InfoNCE and the sigmoid loss (ratios against fp32, this run)
  largest_batch  the largest batch (doubling) a step fits in, plain, with the gradient cache
                 (64-row chunks) and with activation checkpointing of both towers, and the
                 peak memory at it (torch.cuda.max_memory_allocated)

Run: .venv/bin/python benchmarks/gpu.py [--cases precision,largest_batch] [--dry-run]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="precision,largest_batch")
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


if __name__ == "__main__":
    main()
