"""Training levers for big towers, each against its baseline measured in this run (CPU, gloo):

  checkpointing  one process, a 6-layer 512-wide text tower on 256-token rows: step time and
                 the step's peak memory with model.text.activation_checkpointing on vs off
  fsdp_memory    4 processes, a 151M-parameter text tower (12 layers, 1024 wide) trained two
                 AdamW steps: each process's peak memory under FSDP vs DDP, against a 2 GiB
                 cap per process (weights, gradients and Adam state are 16 bytes a parameter);
                 FSDP with the model built whole on every rank (as before) vs on the meta
                 device (as now), at setup and over the steps, on 4 and 8 processes
  fsdp_grad_cache  the same tower on 4 processes with 32 rows each, where activations outweigh
                 a rank's shard: FSDP's peak memory per process with the gradient cache
                 (chunks of 4 rows) vs without, and their step times
  ray_overhead   jobs/configs/fashion.yaml's model, objective and global batch on 2 CPUs:
                 samples/s of (a) a plain one-process torch loop (2 threads) and (b) DDP over
                 2 gloo processes without Ray (1 thread each), both over the train split
                 decoded once into memory, against `polymodal train`'s second epoch with
                 (c) 2 workers reading the decoded cache, (c') 2 workers with it off and
                 (d) 1 worker with 2 threads, (b) run between them; CPU ms per sample split
                 into step, hand-off, decoding and Ray; target (c) >= 0.95x and (c') >= 0.9x
                 the DDP runs beside it

  sources        the same model and data as one source and as two sources (data.sources,
                 weights 0.5 each: as many rows per epoch): samples/s; target: within noise

Run: .venv/bin/python benchmarks/train.py [--cases checkpointing,fsdp_memory,fsdp_grad_cache,
     ray_overhead,sources]
     [--dry-run] [--data data/fashion-mnist]
Prints one JSON line per case. --dry-run: tiny sizes, a check that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
CAP_MB = 2048
SIZES = {  # text tower width, layers, tokens per row, rows per step
    "checkpointing": {"width": 512, "layers": 6, "tokens": 256, "rows": 32},
    "fsdp_memory": {"width": 1024, "layers": 12, "tokens": 32, "rows": 4},
    "fsdp_grad_cache": {"width": 1024, "layers": 12, "tokens": 16, "rows": 32, "chunk": 4},
    "dry": {"width": 32, "layers": 2, "tokens": 16, "rows": 4, "chunk": 2},
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to the current resident set
    return _status_mb("VmRSS")


def _setup(size: dict, *extra: str):
    """A model, its optimizer and one batch of real captions, as the training loop builds
    them (the image tower is small: the text tower is what is measured)."""
    from polymodal.batch import Batch
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.modalities.text import encode_text
    from polymodal.models.build import build_model
    from polymodal.train.optim import build_optimizer

    cfg = load_config(
        None,
        [
            "model.image.width=4",
            "model.image.norm=group",
            f"model.text.width={size['width']}",
            f"model.text.layers={size['layers']}",
            "model.text.heads=8" if size["width"] >= 256 else "model.text.heads=2",
            "optim.warmup_steps=0",
            *extra,
        ],
    )
    prep = Preprocessing(
        ["image", "text"], image_size=8, image_channels=1, text_max_len=size["tokens"]
    )

    def build():
        torch.manual_seed(0)
        return build_model(cfg, prep).train()

    words = "a photo of the ankle boot on a plain background, seen from the side " * 20
    n = size["rows"]
    ids = torch.stack([torch.from_numpy(encode_text(words[i:], size["tokens"])) for i in range(n)])
    batch = Batch(
        inputs={"image": torch.rand(n, 1, 8, 8), "text": ids},
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
    )
    return cfg, build, batch, build_optimizer


def _step_stats(recompute: bool, size: dict, steps: int, queue) -> None:
    """In a fresh process: median step time and the largest growth of the resident set
    during a step (activations, gradients) over `steps` steps."""
    from polymodal.objectives.joint import joint_loss
    from polymodal.towers.checkpointing import checkpoint_activations

    torch.set_num_threads(2)
    cfg, build, batch, build_optimizer = _setup(size)
    model = build()
    if recompute:
        checkpoint_activations(model.encoders["text"], "model.text")
    optimizer = build_optimizer(model, cfg.optim)
    times, peaks = [], []
    for _ in range(steps):
        base = _reset_peak()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = joint_loss(model(batch), batch, cfg)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        peaks.append(_status_mb("VmHWM") - base)
    queue.put({"step_s": statistics.median(times[1:]), "step_peak_mb": max(peaks[1:])})


def _track_live_tensors() -> None:
    """For the memory cases' processes, spawned after this: glibc then hands large freed
    blocks back at once, so the resident set follows live tensors. It slows every large
    allocation (an mmap each), so the speed case's processes must not inherit it."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"


def case_checkpointing(size: dict, steps: int) -> dict:
    _track_live_tensors()
    ctx = mp.get_context("spawn")
    out = {}
    for recompute in (False, True):
        queue = ctx.Queue()
        proc = ctx.Process(target=_step_stats, args=(recompute, size, steps, queue))
        proc.start()
        out[recompute] = queue.get()
        proc.join()
    off, on = out[False], out[True]
    return {
        "case": "checkpointing",
        **{f"text_{k}": v for k, v in size.items()},
        "step_s": [round(off["step_s"], 3), round(on["step_s"], 3)],
        "step_peak_mb": [round(off["step_peak_mb"]), round(on["step_peak_mb"])],
        "time_ratio": round(on["step_s"] / off["step_s"], 3),
        "memory_ratio": round(on["step_peak_mb"] / max(off["step_peak_mb"], 1), 3),
        "order": "[off, on]",
    }


def _rank(rank: int, world: int, init: str, strategy: str, size: dict, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from polymodal.objectives.grad_cache import grad_cache_backward
    from polymodal.objectives.joint import joint_loss
    from polymodal.train.sharding import build_on_meta, spread_from_rank0
    from polymodal.train.step import (
        FSDPGradCacheStep,
        FSDPStep,
        average_scalar_gradients,
        shard_model,
    )

    torch.set_num_threads(1)
    cfg, build, batch, build_optimizer = _setup(size)
    cached = strategy == "fsdp_meta_cache"  # the gradient cache over the shards
    if strategy.startswith("fsdp_meta"):  # as the training loop builds it now
        whole = build() if rank == 0 else None  # rank 0's plain copy: validation, checkpoints
        model = build_on_meta(build)
        (FSDPGradCacheStep if cached else FSDPStep).prepare(model, cfg)
        spread_from_rank0(model, whole, torch.device("cpu"))
        raw = model
    elif strategy == "fsdp":  # as it did: whole on every rank, sharded, and rank 0's copy
        model = build()
        whole = build() if rank == 0 else None
        shard_model(model)
        raw = model
    else:
        model = build()
        model = torch.nn.parallel.DistributedDataParallel(model)
        raw = model.module
    params = sum(p.numel() for p in raw.parameters())  # DTensors count their whole size
    setup = [None] * world  # the peak before the first step: the model built and placed
    dist.all_gather_object(setup, _status_mb("VmHWM"))
    optimizer = build_optimizer(raw, cfg.optim)
    start = time.perf_counter()
    for _ in range(2):  # the first step creates Adam's state
        optimizer.zero_grad(set_to_none=True)
        if cached:
            grad_cache_backward(raw, batch, cfg, size["chunk"])
            average_scalar_gradients(raw)
        else:
            loss, _ = joint_loss(model(batch), batch, cfg)
            loss.backward()
        optimizer.step()
    peaks = [None] * world
    dist.all_gather_object(peaks, _status_mb("VmHWM"))
    if rank == 0:
        with open(out, "w") as f:
            took = time.perf_counter() - start
            json.dump({"params": params, "setup": setup, "peaks": peaks, "s": took}, f)
    dist.barrier()


def _ranks(world: int, strategy: str, size: dict) -> dict:
    """_rank on `world` processes; rank 0's report."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        mp.spawn(_rank, args=(world, os.path.join(tmp, "init"), strategy, size, path), nprocs=world)
        with open(path) as f:
            return json.load(f)


def case_fsdp_memory(size: dict, worlds: tuple[int, ...]) -> dict:
    """At the first world size DDP and FSDP (the model built whole on every rank, as before,
    and on the meta device, as now); at the others (DDP would not fit) the two FSDPs."""
    _track_live_tensors()
    out: dict = {"case": "fsdp_memory", "cap_mb": CAP_MB}
    for world in worlds:
        result = {}
        for strategy in (
            ("ddp", "fsdp", "fsdp_meta") if world == worlds[0] else ("fsdp", "fsdp_meta")
        ):
            result[strategy] = _ranks(world, strategy, size)
        whole, meta = result["fsdp"], result["fsdp_meta"]
        out["params"] = meta["params"]
        out["unsharded_mb"] = round(meta["params"] * 4 / 2**20)
        out[f"world_{world}"] = {
            "setup_peak_mb": {s: [round(p) for p in r["setup"]] for s, r in result.items()},
            "peak_mb": {s: [round(p) for p in r["peaks"]] for s, r in result.items()},
            "two_steps_s": {s: round(r["s"], 1) for s, r in result.items()},
            # rank 0 keeps one whole copy either way (validation, checkpoints)
            "meta_saves_mb_rank_1_on": {
                "setup": round(max(whole["setup"][1:]) - max(meta["setup"][1:])),
                "peak": round(max(whole["peaks"][1:]) - max(meta["peaks"][1:])),
            },
            "fsdp_within_cap": max(meta["peaks"]) <= CAP_MB,
        }
        if "ddp" in result:
            out[f"world_{world}"]["memory_ratio"] = round(
                max(meta["peaks"]) / max(result["ddp"]["peaks"]), 3
            )
    return out


def case_fsdp_grad_cache(size: dict, world: int) -> dict:
    """FSDP as the loop builds it, on a batch whose activations outweigh a rank's shard:
    without and with the gradient cache (the same two AdamW steps)."""
    _track_live_tensors()
    plain, cached = (_ranks(world, s, size) for s in ("fsdp_meta", "fsdp_meta_cache"))
    return {
        "case": "fsdp_grad_cache",
        "params": plain["params"],
        "world": world,
        "rows_per_rank": size["rows"],
        "chunk": size["chunk"],
        "peak_mb": {"fsdp": [round(p) for p in plain["peaks"]],
                    "fsdp_grad_cache": [round(p) for p in cached["peaks"]]},
        "two_steps_s": {"fsdp": round(plain["s"], 1), "fsdp_grad_cache": round(cached["s"], 1)},
        # ranks 1 and up: rank 0 also keeps the whole model for validation and checkpoints
        "saves_mb_rank_1_on": round(max(plain["peaks"][1:]) - max(cached["peaks"][1:])),
        "time_ratio": round(cached["s"] / plain["s"], 3),
    }  # fmt: skip


def _fashion(path: str, *extra: str):
    """fashion.yaml over `path`: its config, preprocessing and train split decoded once."""
    from polymodal.config import load_config
    from polymodal.data.dataset import dataset_manifest, iter_tables, preprocessing_for
    from polymodal.data.decode import decode_columns
    from polymodal.data.format import read_columns

    cfg = load_config(REPO / "jobs/configs/fashion.yaml", [f"data.path={path}", *extra])
    manifest = dataset_manifest(cfg)
    prep = preprocessing_for(cfg, manifest)
    parts = []
    columns = read_columns(path, manifest, prep.modalities)
    for table in iter_tables(path, "train", columns, 4096, manifest):
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        arrays, _ = decode_columns(cols, prep, num_labels=manifest.num_labels)
        parts.append({k: torch.from_numpy(v) for k, v in arrays.items()})
    rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return cfg, prep, manifest, rows


def _cpu_now() -> tuple[float, float, float]:
    """(wall time, CPU seconds the whole machine was busy, CPU seconds the host stole) from
    /proc/stat: what a phase cost in CPU, whichever processes ran it (Ray's daemons too)."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, irq, softirq, steal = map(int, f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return time.time(), (user + nice + system + irq + softirq) / tick, steal / tick


def _role(cmdline: str, driver: int, pid: int) -> str | None:
    """Which part of a polymodal run a process is, by its command line."""
    if pid == driver:
        return "driver"
    if "RayTrainWorker" in cmdline:
        return "train_workers"
    if cmdline.startswith("ray::"):  # decoding tasks, Train's controller, our actors
        return "ray_tasks"
    if "/ray/" in cmdline or "raylet" in cmdline or "gcs_server" in cmdline:
        return "ray_daemons"
    return None


def _cpu_by_role(driver: int) -> dict[str, float]:
    """CPU seconds so far of the live processes of each _role (a task's process that exits
    in between takes its seconds with it: an undercount of ray_tasks)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = _role(cmdline, driver, int(proc.name))
        if role:
            out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _phase(samples_per_s: float, before: tuple, after: tuple) -> dict:
    """samples/s of a phase, with the machine's busy cores, CPU ms per sample and the share
    of CPU time the host stole in its window (this host is shared: steal means noise)."""
    wall = after[0] - before[0]
    busy = (after[1] - before[1]) / wall
    return {
        "samples_per_s": round(samples_per_s),
        "busy_cores": round(busy, 2),
        "cpu_ms_per_sample": round(1000 * busy / samples_per_s, 3),
        "steal_fraction": round((after[2] - before[2]) / wall / (os.cpu_count() or 1), 3),
    }


def _plain_epoch(cfg, prep, manifest, rows, rank: int = 0, world: int = 1) -> dict:
    """The loop a user writes: this rank's share of in-memory rows, shuffled, in batches of
    the global batch / world; returns the _phase of the whole group."""
    from polymodal.batch import Batch
    from polymodal.models.build import build_model
    from polymodal.objectives.joint import joint_loss
    from polymodal.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = build_model(cfg, prep, manifest.num_labels).train()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    raw = model.module if world > 1 else model
    optimizer = build_optimizer(raw, cfg.optim)
    per_rank = cfg.train.batch_size // world
    n = len(rows["label"]) // world
    mine = {k: v[rank * n : (rank + 1) * n] for k, v in rows.items()}
    steps = n // per_rank
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(rank))
    before = _cpu_now()
    for i in range(steps):
        take = order[i * per_rank : (i + 1) * per_rank]
        batch = Batch.from_dict({k: v[take] for k, v in mine.items()})
        optimizer.zero_grad(set_to_none=True)
        loss, _ = joint_loss(model(batch), batch, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
    after = _cpu_now()
    return _phase(steps * per_rank * world / (after[0] - before[0]), before, after)


def _ddp_rank(rank: int, world: int, init: str, path: str, extra: tuple, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg, prep, manifest, rows = _fashion(path, *extra)
    dist.barrier()  # decoding done everywhere: the clock starts together
    phase = _plain_epoch(cfg, prep, manifest, rows, rank, world)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(phase, f)
    dist.barrier()


def _ddp_no_ray(path: str, extra: tuple) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(_ddp_rank, args=(2, os.path.join(tmp, "init"), path, extra, out), nprocs=2)
        with open(out) as f:
            return json.load(f)


def _polymodal_fit(overrides: list, queue) -> None:
    from polymodal.config import load_config
    from polymodal.train.run import fit

    queue.put(fit(load_config(REPO / "jobs/configs/fashion.yaml", overrides)).metrics)


def _checkpoint_time(name: str) -> float:
    """When a checkpoint was named (loop.py names them by local time, to the microsecond)."""
    stamp, micro = name.removeprefix("checkpoint_").split(".")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d_%H-%M-%S")) + int(micro) / 1e6


def _polymodal(path: str, extra: tuple, batch_size: int, *workers: str) -> dict:
    """`polymodal train` for 2 epochs in a fresh process (its own Ray cluster); the _phase of
    its second epoch's training, from the CPU sampled here every 0.5 s between the first
    epoch's checkpoint and the end of the second epoch's last step."""
    samples, roles = [], []
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data.path={path}", f"train.storage_path={tmp}", "train.epochs=2"]
        proc = ctx.Process(target=_polymodal_fit, args=([*overrides, *extra, *workers], queue))
        proc.start()
        while queue.empty() and proc.is_alive():
            samples.append(_cpu_now())
            roles.append(_cpu_by_role(proc.pid or 0))
            time.sleep(0.5)
        metrics = queue.get(timeout=60)
        proc.join()
        names = [p.name for p in Path(tmp, "fashion").glob("checkpoint_2*")]
        first = min(map(_checkpoint_time, names))
    speed = metrics["train/samples_per_s"]
    seconds = metrics["step"] // 2 * batch_size / speed
    # in from both ends: the window holds only steps (not the report, nor validation)
    margin = min(2.0, seconds / 4)
    window = [
        i for i, s in enumerate(samples) if first + margin <= s[0] <= first + seconds - margin
    ]
    if len(window) < 2:  # a dry run's epoch of a second or so
        window = [i for i, s in enumerate(samples) if s[0] >= first][:2]
    lo, hi = window[0], window[-1]
    phase = _phase(speed, samples[lo], samples[hi])
    trained = speed * (samples[hi][0] - samples[lo][0])
    phase["cpu_ms_per_sample_by_role"] = {
        role: round(1000 * (roles[hi].get(role, 0.0) - roles[lo].get(role, 0.0)) / trained, 3)
        for role in sorted(roles[hi])
    }
    phase["data_wait_fraction"] = round(metrics["train/data_wait_fraction"], 4)
    phase["read_from_cache"] = bool(metrics["train/read_from_cache"])
    return phase


def _breakdown(run: dict, step_ms: float) -> dict[str, float]:
    """A polymodal run's CPU ms per sample split: the step (as a baseline spends it),
    the hand-off in the workers (the rest of their CPU: batches from Ray Data or the cache,
    bookkeeping), decoding (Ray's tasks: read tasks, Train's controller) and Ray's daemons
    with the driver; `other`: the machine's busy CPU that no process of the run shows."""
    roles = run["cpu_ms_per_sample_by_role"]
    out = {
        "step": step_ms,
        "hand_off": roles.get("train_workers", 0.0) - step_ms,
        "decode_and_ray_tasks": roles.get("ray_tasks", 0.0),
        "ray_daemons_and_driver": roles.get("ray_daemons", 0.0) + roles.get("driver", 0.0),
    }
    out["other"] = run["cpu_ms_per_sample"] - sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def case_ray_overhead(path: str, extra: tuple) -> dict:
    """(a) the plain loop once, then (b) DDP without Ray before, between and after the
    polymodal runs (c: 2 workers, its second epoch from the decoded cache; c': 2 workers with
    the cache off, every epoch decoded by Ray Data's tasks; d: 1 worker with both threads).
    The host's speed drifts over minutes: each run's ratio is against the better of the two
    DDP runs beside it."""
    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)  # the memory cases' (_track_live_tensors)
    torch.set_num_threads(2)
    start = time.process_time()
    cfg, prep, manifest, rows = _fashion(path, *extra)
    decode_ms = 1000 * (time.process_time() - start) / len(rows["label"])
    plain = _plain_epoch(cfg, prep, manifest, rows)
    batch = cfg.train.batch_size
    variants = {
        "2_workers_cached": (),
        "2_workers_decoded": ("data.decode_cache_mb=0",),
        "1_worker": ("train.num_workers=1", "train.cpus_per_worker=2"),
    }
    ddp, runs = [_ddp_no_ray(path, extra)], {}
    for name, overrides in variants.items():
        runs[name] = _polymodal(path, extra, batch, *overrides)
        ddp.append(_ddp_no_ray(path, extra))
    ratios, breakdown = {}, {}
    for i, (name, run) in enumerate(runs.items()):
        beside = max(ddp[i : i + 2], key=lambda x: x["samples_per_s"])
        ratios[name] = round(run["samples_per_s"] / beside["samples_per_s"], 3)
        # the step as the baseline of the same shape spends it: one process, 2 threads for d
        step = plain if name == "1_worker" else beside
        breakdown[name] = _breakdown(run, step["cpu_ms_per_sample"])
    return {
        "case": "ray_overhead",
        "plain_loop": plain,
        "ddp_no_ray": ddp,
        "polymodal": runs,
        "decode_ms_per_sample_one_core": round(decode_ms, 3),
        "cpu_ms_per_sample_breakdown": breakdown,
        "ratio_vs_ddp_beside": ratios,
        "target": ">= 0.9 decoded, >= 0.95 cached",
    }


def case_sources(path: str, extra: tuple) -> dict:
    """The mixture's cost: `polymodal train` on the dataset as one source (data.path) against
    the same dataset as two sources of weight 0.5 (data.sources: each epoch reads half of
    each one's row groups, as many rows as one pass), mixed in every batch (data.mix: rows)
    and a source per batch (data.mix: batches: a stream per source in each worker),
    alternated twice against the host's drift."""
    batch = _fashion(path, *extra)[0].train.batch_size
    halves = ", ".join(f"{{path: {path}, name: {n}, weight: 0.5}}" for n in "ab")
    two = f"data.sources=[{halves}]"
    runs: dict[str, list] = {"one_source": [], "two_sources": [], "two_sources_batches": []}
    for _ in range(2):
        runs["one_source"].append(_polymodal(path, extra, batch))
        runs["two_sources"].append(_polymodal(path, extra, batch, two))
        runs["two_sources_batches"].append(_polymodal(path, extra, batch, two, "data.mix=batches"))
    best = {k: max(r["samples_per_s"] for r in v) for k, v in runs.items()}
    return {
        "case": "sources",
        **runs,
        "ratio_two_vs_one": round(best["two_sources"] / best["one_source"], 3),
        "ratio_batches_vs_one": round(best["two_sources_batches"] / best["one_source"], 3),
        "target": "within noise of 1.0",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="checkpointing,fsdp_memory,ray_overhead")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: does it run")
    parser.add_argument("--data", default=str(REPO / "data/fashion-mnist"))
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if "checkpointing" in cases:
        size = SIZES["dry" if args.dry_run else "checkpointing"]
        print(json.dumps(case_checkpointing(size, 3 if args.dry_run else 6)), flush=True)
    if "fsdp_memory" in cases:
        size = SIZES["dry" if args.dry_run else "fsdp_memory"]
        print(json.dumps(case_fsdp_memory(size, (2,) if args.dry_run else (4, 8))), flush=True)
    if "fsdp_grad_cache" in cases:
        size = SIZES["dry" if args.dry_run else "fsdp_grad_cache"]
        print(json.dumps(case_fsdp_grad_cache(size, 2 if args.dry_run else 4)), flush=True)
    if cases & {"ray_overhead", "sources"}:
        from polymodal.data.ingest import ingest

        data, extra = args.data, ()
        if args.dry_run:  # 2,000 rows, small steps
            data = os.path.join(tempfile.mkdtemp(), "fashion-mnist")
            extra = ("train.batch_size=64",)
            ingest("builtin:fashion-mnist", data, progress=False, limit=2000)
        elif not Path(data, "manifest.json").is_file():
            ingest("builtin:fashion-mnist", data, progress=False)
        if "ray_overhead" in cases:
            print(json.dumps(case_ray_overhead(data, extra)), flush=True)
        if "sources" in cases:
            print(json.dumps(case_sources(data, extra)), flush=True)


if __name__ == "__main__":
    main()
