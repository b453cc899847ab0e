"""Closed-loop load on the embedding service through real HTTP, side by side with what a user
would write instead (benchmarks/baselines/plain_app.py: uvicorn, model in-process) and the
offline encoder (the limit), on the same checkpoint, all measured in this run.

Run: .venv/bin/python benchmarks/serve.py [--quick] [--models demo,large] [--servers ...]
     [--checkpoints teacher=CHECKPOINT,student=CHECKPOINT]
Servers: plain (the baseline app), polymodal (as shipped: one hop from Serve's proxy), split
(models in a deployment behind the gateway), direct (polymodal's app under Serve's
throughput-optimized mode, reached at the ingress replica's own port: direct ingress).
Prints one JSON line per (model, server, route, load), one per offline limit, then one line per
target with its ratio. Models: the demo's architecture (jobs/configs/fashion.yaml) and a larger
one (ResNet-18 images, 4-layer text), with fresh weights (speed does not depend on training).
Loads: one item per request at concurrency 1, 8 and 32 (online callers), and 32 items per
request at concurrency 8 (bulk). cpu_ms_per_request is the host's CPU time over the level (all
server processes; the client's own time subtracted) per answered request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "fashion.yaml"
LOADS = [(1, 1), (8, 1), (32, 1), (8, 32)]  # (concurrency, items per request)
MODELS = {
    "demo": [],
    "large": ["model.image.encoder=resnet18", "model.text.width=256", "model.text.layers=4"],
}


def _checkpoint(overrides: list[str], out: Path) -> Path:
    import torch

    from polymodal.checkpoint import RunMeta, save_checkpoint
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
    meta = RunMeta(
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        num_classes=10,
        label_names=[str(i) for i in range(10)],
    )
    return save_checkpoint(out / "bench", model, meta)


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


def _host_cpu_s() -> float:
    """Busy CPU seconds of the whole host since boot (user + nice + system + irq + softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return ticks / os.sysconf("SC_CLK_TCK")


async def _load(
    url: str, model: str, values: list, load: tuple[int, int], secs: float, warm: float
):
    import aiohttp

    concurrency, per_request = load
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + warm + secs
    record_from = time.perf_counter() + warm
    cpu: dict[str, float] = {}

    async def client(session, k: int) -> None:
        nonlocal errors
        i = k
        while (now := time.perf_counter()) < stop_at:
            if now >= record_from and not cpu:
                cpu["host"], cpu["self"] = _host_cpu_s(), time.process_time()
            chunk = [values[(i + j) % len(values)] for j in range(per_request)]
            body = {"model": model, "input": chunk[0] if per_request == 1 else chunk}
            async with session.post(url, json=body) as resp:
                await resp.read()
                ok = resp.status == 200
            if now >= record_from:
                latencies.append(time.perf_counter() - now) if ok else None
                errors += not ok
            i += concurrency * per_request

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*[client(session, k) for k in range(concurrency)])
    server_cpu = (_host_cpu_s() - cpu["host"]) - (time.process_time() - cpu["self"])
    lat = sorted(latencies)
    return {
        "requests_per_s": len(lat) / secs,
        "items_per_s": len(lat) * per_request / secs,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "cpu_ms_per_request": 1000 * server_cpu / max(1, len(lat)),
        "errors": errors,
    }


def _plain_app(checkpoint: Path, port: int, max_batch: int) -> subprocess.Popen:
    """benchmarks/baselines/plain_app.py in its own uvicorn process, once it answers."""
    import urllib.request

    env = {**os.environ, "PLAIN_CHECKPOINT": str(checkpoint), "PLAIN_MAX_BATCH": str(max_batch)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.baselines.plain_app:app",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"], env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the plain app did not start within 120 s")


def _start_ray(direct: bool) -> int:
    """A local Ray cluster with Serve's HTTP proxy on a free port → that port. `direct`: Serve's
    throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, read when the cluster starts),
    whose direct ingress lets clients reach ingress replicas on their own ports."""
    import ray
    from ray import serve

    from polymodal.cluster import RAY_ENV

    for key, value in RAY_ENV.items():  # the settings polymodal's own clusters start with
        os.environ.setdefault(key, value)
    if direct:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    else:
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def _stop_ray() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def _serve(checkpoint: Path, server: str, args, port: int) -> str:
    """polymodal serve as `serve run` builds it → its embeddings URL. `split` keeps the model in
    its own deployment behind the ingress; `direct` is served on the cluster started by
    _start_ray(direct=True), at the ingress replica's own port (Serve's target groups: what a
    load balancer in front of direct ingress reads)."""
    import ray
    from ray import serve

    from polymodal.serving.app import build_app

    app = build_app(
        str(checkpoint),
        max_batch_size=args.max_batch_size,
        max_queued_requests=1024,  # measure queueing, not load shedding
        num_cpus=args.embedder_cpus,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        access_log=args.access_log,
        split=server == "split",
    )
    serve.run(app, name="bench", route_prefix="/")
    if server == "direct":
        from ray.serve.context import _get_global_client

        controller = _get_global_client()._controller
        groups = ray.get(controller.get_target_groups.remote("bench"))
        target = next(t for g in groups if g.protocol == "HTTP" for t in g.targets)
        port = target.port
    return f"http://127.0.0.1:{port}/v1/embeddings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,large", help=f"of {sorted(MODELS)}")
    parser.add_argument(
        "--servers", default="plain,polymodal,direct", help="of plain,polymodal,split,direct"
    )
    parser.add_argument(
        "--checkpoints",
        default="",
        help="NAME=CHECKPOINT,... trained checkpoints served instead of --models' fresh ones; "
        "with two, each load's items/s of the second over the first (a distilled student "
        "over its teacher)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke check)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--embedder-cpus", type=float, default=float(os.cpu_count() or 1), help="per replica"
    )
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args()
    secs, warm = (1.5, 0.5) if args.quick else (6.0, 1.5)
    servers = args.servers.split(",")

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="pm-serve-bench-"))
    values = _inputs(size=28)
    targets = {}
    direct = None
    port = _start_ray(direct=False)
    given = dict(x.split("=", 1) for x in args.checkpoints.split(",") if x)
    every: dict[tuple, dict] = {}
    for name in given or args.models.split(","):
        checkpoint = Path(given[name]) if given else _checkpoint(MODELS[name], tmp / name)
        # The offline limit gets the threads one model replica gets.
        torch.set_num_threads(max(1, int(args.embedder_cpus)))
        limit = {
            m: offline_limit(checkpoint, values[m], m, args.max_batch_size, secs) for m in values
        }
        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps({"model": name, "offline_items_per_s": limit}), flush=True)
        results = {}
        for server in servers:
            plain = None
            if server == "plain":
                plain_port = free_port()
                plain = _plain_app(checkpoint, plain_port, args.max_batch_size)
                url = f"http://127.0.0.1:{plain_port}/v1/embeddings"
            else:
                if (server == "direct") != direct:
                    _stop_ray()
                    direct = server == "direct"
                    port = _start_ray(direct)
                url = _serve(checkpoint, server, args, port)
            try:
                for modality in values:
                    for load in LOADS:
                        r = asyncio.run(
                            _load(url, checkpoint.name, values[modality], load, secs, warm)
                        )
                        results[(server, modality, load)] = r
                        every[(name, server, modality, load)] = r
                        row = {"model": name, "server": server, "route": modality}
                        row |= {"concurrency": load[0], "items_per_request": load[1]}
                        row |= {k: round(v, 2) for k, v in r.items()}
                        print(json.dumps(row), flush=True)
            finally:
                if plain is not None:
                    plain.terminate()
                    plain.wait()
                else:
                    from ray import serve

                    serve.delete("bench")
        for m in values:
            for server in servers:
                if server == "plain":
                    continue
                ours = {load: results[(server, m, load)] for load in LOADS}
                if "plain" in servers:
                    base = {load: results[("plain", m, load)] for load in LOADS}
                    single = ours[(32, 1)]["items_per_s"] / base[(32, 1)]["items_per_s"]
                    lone = ours[(1, 1)]["p50_ms"] / base[(1, 1)]["p50_ms"]
                    bulk = ours[(8, 32)]["items_per_s"] / base[(8, 32)]["items_per_s"]
                    key = f"{name} {m} {server}"
                    targets[f"{key}: single items c=32 / plain app (>= 0.5, goal 1.0)"] = single
                    targets[f"{key}: lone request p50 / plain app (<= 2)"] = lone
                    targets[f"{key}: bulk 32 items c=8 / plain app (>= 0.9)"] = bulk
                at8 = ours[(8, 1)]
                bulk_limit = ours[(8, 32)]["items_per_s"] / limit[m]
                targets[f"{name} {m} {server}: bulk / offline limit (>= 0.7 large)"] = bulk_limit
                targets[f"{name} {m} {server}: p99 / p50 at c=8 (<= 2)"] = (
                    at8["p99_ms"] / at8["p50_ms"]
                )
    _stop_ray()
    if len(given) == 2:  # the second model's speed over the first's, load by load
        first, second = given
        for (name, server, m, load), r in every.items():
            if name == second:
                base = every[(first, server, m, load)]["items_per_s"]
                key = f"{second} / {first} {m} {server} c={load[0]} x{load[1]}: items/s"
                targets[key] = r["items_per_s"] / base
    for target, ratio in targets.items():
        print(json.dumps({"target": target, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
