"""Peak memory and time of one contrastive loss step per rank, by world size, batch and mode;
then the gradient cache against plain full-batch steps under one memory cap.

Run: .venv/bin/python benchmarks/contrastive.py [--quick]
Prints one JSON line per configuration, then one line per target with its ratio (measured in
this run). Memory is the peak resident set growth of each rank during the step (Linux
VmHWM, reset through /proc/self/clear_refs), the largest over ranks; CPU, gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

DIM = 128
# A fixed mmap threshold makes glibc hand every large freed block back to the OS, so the
# resident set follows live tensors (set before the rank processes start).
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    return _rss_kib("VmRSS")


def _loss_step(rank: int, world: int, init: str, cfg: dict, out: str) -> None:
    from polymodal.objectives.pairwise import info_nce, sigmoid_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    b_local = cfg["global_batch"] // world
    g = torch.Generator().manual_seed(rank)
    a = F.normalize(torch.randn(b_local, DIM, generator=g), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(b_local, DIM, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)

    def step() -> None:
        if cfg["kind"] == "sigmoid":
            loss = sigmoid_loss(a, b, scale, bias, gather=cfg["gather"], chunk_size=cfg["chunk"])
        else:
            loss = info_nce(a, b, scale, gather=cfg["gather"])
        loss.backward()

    step()  # warm-up: gloo buffers and the allocator settle; not measured
    dist.barrier()
    base = _reset_peak()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = torch.tensor([(_rss_kib("VmHWM") - base) / 1024.0, seconds])
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save(peak, out)
    dist.destroy_process_group()


def run_loss(world: int, global_batch: int, kind: str, gather: str, chunk: int = 1024) -> dict:
    cfg = {"global_batch": global_batch, "kind": kind, "gather": gather, "chunk": chunk}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peak.pt")
        mp.spawn(_loss_step, args=(world, os.path.join(tmp, "init"), cfg, out), nprocs=world)
        peak_mib, seconds = torch.load(out).tolist()
    row = {
        "bench": "loss_step",
        "world": world,
        "global_batch": global_batch,
        "b_local": global_batch // world,
        "mode": f"{kind}-{gather}",
        "chunk": chunk,
        "peak_mib_per_rank": round(peak_mib, 1),
        "seconds_per_step": round(seconds, 3),
    }
    print(json.dumps(row), flush=True)
    return row


def _encoder_step(cfg: dict, out: str) -> None:
    """One training step of a real JointModel (image + text) in a fresh process."""
    from polymodal.batch import Batch
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model
    from polymodal.objectives.grad_cache import grad_cache_backward
    from polymodal.objectives.joint import joint_loss

    torch.set_num_threads(1)
    config = load_config(
        None,
        [
            "model.image.width=16",
            "model.image.norm=group",
            "model.text.layers=1",
            "objective.contrastive.kind=sigmoid",
            "objective.contrastive.chunk_size=1024",
        ],
    )
    prep = Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=32)
    torch.manual_seed(0)
    model = build_model(config, prep).train()
    n = cfg["batch"]
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        inputs={
            "image": torch.rand(n, 1, 28, 28, generator=g),
            "text": torch.randint(1, 257, (n, 32), generator=g),
        },
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.zeros(n, dtype=torch.long),
    )
    base = _reset_peak()
    start = time.perf_counter()
    if cfg["chunk"]:
        grad_cache_backward(model, batch, config.objective, cfg["chunk"])
    else:
        loss, _ = joint_loss(model(batch), batch, config)
        loss.backward()
    seconds = time.perf_counter() - start
    grad = model.encoders["image"].net[0][0].weight.grad.clone()
    torch.save(
        {"peak_mib": (_rss_kib("VmHWM") - base) / 1024.0, "seconds": seconds, "grad": grad}, out
    )


def run_encoder(batch: int, chunk: int) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        p = ctx.Process(target=_encoder_step, args=({"batch": batch, "chunk": chunk}, out))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"encoder step batch={batch} chunk={chunk} failed")
        r = torch.load(out)
    row = {
        "bench": "grad_cache" if chunk else "full_batch",
        "batch": batch,
        "chunk": chunk,
        "peak_mib": round(r["peak_mib"], 1),
        "seconds": round(r["seconds"], 3),
        "us_per_sample": round(r["seconds"] / batch * 1e6, 1),
    }
    print(json.dumps(row), flush=True)
    return {**row, "grad": r["grad"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, for a smoke run")
    parser.add_argument("--cap-mib", type=float, default=1024.0, help="memory cap, grad cache")
    parser.add_argument("--only", choices=["grad-cache"], help="run one part")
    args = parser.parse_args()
    big = 2048 if args.quick else 8192
    fixed_local = 512 if args.quick else 4096

    targets = []
    if args.only == "grad-cache":
        return grad_cache_targets(args, targets)
    # 1. local vs full at one global batch: local should need ~1/W of full's memory.
    for world in (2, 4):
        full = run_loss(world, big, "infonce", "full")
        local = run_loss(world, big, "infonce", "local")
        ratio = local["peak_mib_per_rank"] / max(full["peak_mib_per_rank"], 1e-9)
        targets.append(
            {
                "target": f"infonce local/full memory, W={world}",
                "ratio": round(ratio, 3),
                "goal": f"<= {1 / world + 0.1:.2f}",
                "met": ratio <= 1 / world + 0.1,
            }
        )
    # 2. chunked sigmoid at fixed B_local: memory per rank must not grow with W.
    sig = {w: run_loss(w, fixed_local * w, "sigmoid", "local") for w in (1, 2, 4)}
    growth = sig[4]["peak_mib_per_rank"] / max(sig[1]["peak_mib_per_rank"], 1e-9)
    targets.append(
        {
            "target": "sigmoid memory W=4 / W=1 at fixed B_local",
            "ratio": round(growth, 3),
            "goal": "<= 1.2",
            "met": growth <= 1.2,
        }
    )
    # The largest batch we run: local InfoNCE and chunked sigmoid, 1 and 4 ranks.
    largest = 2 * big
    for world in (1, 4):
        for batch in (1024, largest):
            run_loss(world, batch, "infonce", "local")
            run_loss(world, batch, "sigmoid", "local")

    grad_cache_targets(args, targets)


def grad_cache_targets(args: argparse.Namespace, targets: list[dict]) -> None:
    # 3. gradient cache: largest plain batch under the cap, then 8x that with the cache.
    fits, batch = None, 128
    while True:
        row = run_encoder(batch, 0)
        if row["peak_mib"] > args.cap_mib:
            break
        fits, batch = row, batch * 2
    if fits is None:
        raise SystemExit(f"even batch 128 needs more than --cap-mib {args.cap_mib}")
    cached = run_encoder(fits["batch"] * 8, fits["batch"] // 2)
    # The same 8x batch without the cache, over the cap: the cost of the cache alone, apart
    # from the loss's own growth with batch² (which any 8x batch pays).
    uncapped = run_encoder(fits["batch"] * 8, 0)
    same = run_encoder(fits["batch"], fits["batch"] // 4)
    identical = torch.allclose(same["grad"], fits["grad"], rtol=1e-4, atol=1e-6)
    slowdown = cached["us_per_sample"] / uncapped["us_per_sample"]
    targets.append(
        {
            "target": "grad cache: 8x the largest plain batch under the cap",
            "ratio": round(cached["peak_mib"] / args.cap_mib, 3),
            "goal": "<= 1.0",
            "met": cached["peak_mib"] <= args.cap_mib,
        }
    )
    targets.append(
        {
            "target": "grad cache time per sample / plain, same 8x batch",
            "ratio": round(slowdown, 3),
            "goal": "<= 2.2",
            "met": slowdown <= 2.2,
        }
    )
    vs_small = cached["us_per_sample"] / fits["us_per_sample"]
    targets.append(
        {
            "target": "grad cache 8x batch time per sample / plain largest capped batch",
            "ratio": round(vs_small, 3),
            "goal": "report",
            "met": None,
        }
    )
    targets.append(
        {
            "target": "grad cache gradients == plain (same batch)",
            "ratio": float(identical),
            "goal": "1.0",
            "met": identical,
        }
    )
    for t in targets:
        print(json.dumps({"bench": "target", **t}), flush=True)


if __name__ == "__main__":
    main()
