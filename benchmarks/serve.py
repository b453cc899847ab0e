"""Closed-loop load on the embedding service through real HTTP, side by side with what a user
would pick instead (the plain uvicorn app of benchmarks/baselines/plain_app.py; infinity-emb, the
embedding server people deploy) and the offline encoder (the limit), on the same checkpoint, all
measured in this run.

Run: .venv/bin/python benchmarks/serve.py [--quick] [--models demo,large,minilm] [--servers ...]
     [--rounds N] [--checkpoints teacher=CHECKPOINT,student=CHECKPOINT]
e.g. the peer comparison: benchmarks/serve.py --models minilm --servers peer,polymodal --rounds 3
Servers: plain (the baseline app), polymodal (`polymodal serve` as shipped, spawned as a user
runs it: one replica answers at its port itself, Serve's direct ingress), grpc (the same, called
through its gRPC ingress, embeddings.proto), peer (infinity-emb 0.0.78 in its own virtualenv,
made on first use, serving the same all-MiniLM-L6-v2: only for checkpoints whose text tower is
`minilm`), split (models in a deployment behind the gateway, through Serve's proxy), direct
(the app under Serve's throughput-optimized mode, in-process). Spawned servers (plain,
polymodal, grpc, peer) also report seconds from spawn to the first embedding and their memory.
Prints one JSON line per (model, round, server, route, load), one per offline limit, then one
line per target with its ratio (medians over rounds; servers alternate within each round).
Models: the demo's architecture (jobs/configs/fashion.yaml), a larger one (ResNet-18 images,
4-layer text), and minilm (the demo with all-MiniLM-L6-v2 as its frozen text tower, fed 2,000
real English sentences; its limit is also bare transformers'), with fresh projections (speed does
not depend on training). Loads: one item per request at concurrency 1, 8 and 32 (online
callers), and 32 items per request at concurrency 8 (bulk). cpu_ms_per_request is the host's CPU
time over the level (all server processes; the client's own time subtracted) per answered request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.ports import free_port
from polymodal.pretrained import pretrained_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peer import bare_limit, english, spawn_peer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "fashion.yaml"
LOADS = [(1, 1), (8, 1), (32, 1), (8, 32)]  # (concurrency, items per request)
MODELS = {
    "demo": [],
    "large": ["model.image.encoder=resnet18", "model.text.width=256", "model.text.layers=4"],
    "minilm": ["model.text.encoder=minilm", "model.text.tuning=freeze", "data.text_max_len=128"],
}
SPAWNED = {"plain", "polymodal", "grpc", "peer"}  # servers in processes of their own


def _checkpoint(overrides: list[str], out: Path) -> Path:
    from polymodal.config import load_config

    return fresh_checkpoint(load_config(str(CONFIG), [*overrides, "data.image_channels=1"]), out)


def fresh_checkpoint(cfg, out: Path) -> Path:
    """cfg's model with fresh weights (pretrained towers: theirs) saved as out/bench."""
    import torch

    from polymodal.checkpoint import RunMeta, save_checkpoint
    from polymodal.modalities import MODALITIES, Preprocessing
    from polymodal.models.build import build_model

    settings: dict = {}  # each modality's, as training sets them (no dataset statistics here)
    for m in cfg.model.modalities:
        settings |= MODALITIES[m].settings(cfg, None, None)
    prep = Preprocessing(list(cfg.model.modalities), **settings)
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


async def _closed_loop(call, values: list, load: tuple[int, int], secs: float, warm: float):
    """`concurrency` clients, each sending its next request as soon as the last is answered;
    call(items) → whether it succeeded. The requests answered from `warm` on count: their
    latencies, and the host's CPU over that window."""
    concurrency, per_request = load
    latencies: list[float] = []
    errors = answered = 0  # over the whole run: every client finishes at least one request
    stop_at = time.perf_counter() + warm + secs
    record_from = time.perf_counter() + warm
    cpu: dict[str, float] = {}

    async def client(k: int) -> None:
        nonlocal errors, answered
        i = k
        while (now := time.perf_counter()) < stop_at:
            ok = await call([values[(i + j) % len(values)] for j in range(per_request)])
            errors, answered = errors + (not ok), answered + ok
            if ok and record_from <= (done := time.perf_counter()) <= stop_at:  # in the window
                latencies.append(done - now)
            i += concurrency * per_request

    async def mark() -> None:  # the window opens at record_from, requests in flight or not
        await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
        cpu["host"], cpu["self"] = _host_cpu_s(), time.process_time()

    await asyncio.gather(mark(), *[client(k) for k in range(concurrency)])
    server_cpu = (_host_cpu_s() - cpu["host"]) - (time.process_time() - cpu["self"])
    # No request answered in a window shorter than one request (a loaded host, a dry run).
    lat = sorted(latencies) or [math.nan]
    return {
        "requests_per_s": len(latencies) / secs,
        "items_per_s": len(latencies) * per_request / secs,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "cpu_ms_per_request": 1000 * server_cpu / max(1, len(latencies)),
        "errors": errors,
        "answered": answered,
    }


async def _load(
    url: str, model: str, values: list, load: tuple[int, int], secs: float, warm: float
):
    """The closed loop over HTTP: POST /v1/embeddings (a lone item as `input` itself)."""
    import aiohttp

    async def call(chunk: list) -> bool:
        body = {"model": model, "input": chunk[0] if len(chunk) == 1 else chunk}
        async with session.post(url, json=body) as resp:
            await resp.read()
            return resp.status == 200

    connector = aiohttp.TCPConnector(limit=load[0])
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await _closed_loop(call, values, load, secs, warm)


async def _load_grpc(
    target: str, model: str, values: list, load: tuple[int, int], secs: float, warm: float
):
    """The closed loop over gRPC: Embeddings.Embed (embeddings.proto), one channel."""
    import grpc

    from polymodal.serving import embeddings_pb2 as pb
    from polymodal.serving import embeddings_pb2_grpc as pb_grpc

    def item(value: str):
        if value.startswith("data:image/"):
            return pb.Item(modality="image", data=base64.b64decode(value.split(",", 1)[1]))
        return pb.Item(text=value)

    items = {v: item(v) for v in values}

    async def call(chunk: list) -> bool:
        try:
            await stub.Embed(pb.EmbedRequest(model=model, items=[items[v] for v in chunk]))
            return True
        except grpc.aio.AioRpcError:
            return False

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingsStub(channel)
        return await _closed_loop(call, values, load, secs, warm)


def _start_ray(direct: bool) -> int:
    """A local Ray cluster with Serve's HTTP proxy on a free port → that port. `direct`: Serve's
    throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, read when the cluster starts),
    whose direct ingress lets clients reach ingress replicas on their own ports."""
    import ray
    from ray import serve

    from polymodal.cluster import RAY_ENV
    from polymodal.serving.launch import SERVE_ENV

    for key, value in (RAY_ENV | SERVE_ENV).items():  # as polymodal serve starts its cluster
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
        num_cpus=args.threads,
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


def _wait_first(url: str, model: str, text: str, proc: subprocess.Popen, limit: float) -> float:
    """Seconds from now until `url` answers a one-text embedding request with 200."""
    import urllib.request

    body = json.dumps({"model": model, "input": text}).encode()
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60):
                return time.perf_counter() - start
        except OSError:  # not listening yet, or 404/503 while the app deploys
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"no embedding from {url} within {limit:.0f} s")


def _spawn(server: str, checkpoint: Path, args) -> tuple[subprocess.Popen, str, str]:
    """A server in processes of its own, started as a user starts it → (process, its
    embeddings URL, where `grpc` answers gRPC)."""
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("RAY_ADDRESS", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "OMP_NUM_THREADS"):
        env.pop(key, None)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    if server == "peer":
        return spawn_peer(pretrained_dir("minilm"), checkpoint.name, port, args.threads), url, ""
    if server == "plain":
        env |= {"PLAIN_CHECKPOINT": str(checkpoint), "PLAIN_MAX_BATCH": str(args.max_batch_size)}
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.baselines.plain_app:app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return subprocess.Popen([*cmd, "--no-access-log"], env=env, cwd=REPO, **quiet), url, ""
    cmd = [sys.executable, "-m", "polymodal.cli", "serve", str(checkpoint), "--port", str(port)]
    cmd += ["--metrics-port", str(free_port()), "--max-batch-size", str(args.max_batch_size)]
    cmd += ["--num-cpus", str(args.threads), "--num-gpus", str(args.num_gpus)]
    cmd += ["--grpc-port", str(grpc_port)] if server == "grpc" else []
    return subprocess.Popen(cmd, env=env, cwd=REPO, **quiet), url, f"127.0.0.1:{grpc_port}"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (polymodal serve shuts Serve and Ray down), then the whole process group."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _mib_in_use() -> float:
    """The whole machine's memory in use (MemTotal - MemAvailable), MiB."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024


def _footprint(pid: int, before_mib: float) -> dict[str, float]:
    """What a server holds: the machine's memory in use over `before_mib`, and the PSS of its
    processes, split into the model's process (Serve's replica; the server itself otherwise)
    and the rest (for polymodal: Ray's)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    pss, model = 0.0, 0.0
    for p in tree:
        with contextlib.suppress(OSError):
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            mib = int(rollup.split("Pss:")[1].split()[0]) / 1024
            pss += mib
            title = Path(f"/proc/{p}/cmdline").read_bytes()
            if b"ServeReplica" in title or len(tree) == 1:  # a replica, or a lone server
                model += mib
    return {
        "memory_in_use_mib": _mib_in_use() - before_mib,
        "pss_mib": pss,
        "model_process_mib": model,
        "processes": len(tree),
    }


def _text_tower(checkpoint: Path) -> str:
    return json.loads((checkpoint / "polymodal.json").read_text())["config"]["model"]["text"][
        "encoder"
    ]


def _median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def _targets(name: str, servers: list[str], routes, limit, bare, res, starts) -> dict[str, float]:
    """Each target's ratio, from the medians over rounds."""
    out: dict[str, float] = {}
    for m in routes:
        for server in servers:
            if server in ("plain", "peer") or (server, m, LOADS[0]) not in res:
                continue
            ours = {load: res[(server, m, load)] for load in LOADS}
            key = f"{name} {m} {server}"
            for base, aim in (("plain", (0.5, 2, 0.9)), ("peer", (1.0, 1.0, 1.0))):
                if (base, m, LOADS[0]) not in res:
                    continue
                theirs = {load: res[(base, m, load)] for load in LOADS}
                out[f"{key}: single items c=32 / {base} (>= {aim[0]})"] = (
                    ours[(32, 1)]["items_per_s"] / theirs[(32, 1)]["items_per_s"]
                )
                out[f"{key}: lone request p50 / {base} (<= {aim[1]})"] = (
                    ours[(1, 1)]["p50_ms"] / theirs[(1, 1)]["p50_ms"]
                )
                out[f"{key}: bulk 32 items c=8 / {base} (>= {aim[2]})"] = (
                    ours[(8, 32)]["items_per_s"] / theirs[(8, 32)]["items_per_s"]
                )
                if (name, server) in starts and (name, base) in starts:
                    out[f"{key}: time to first embedding / {base} (<= 1)"] = (
                        starts[(name, server)]["first_embedding_s"]
                        / starts[(name, base)]["first_embedding_s"]
                    )
            out[f"{key}: bulk / offline limit (>= 0.7 large)"] = (
                ours[(8, 32)]["items_per_s"] / limit[m]
            )
            if bare and m == "text":
                out[f"{key}: bulk / bare transformers (>= 0.95)"] = (
                    ours[(8, 32)]["items_per_s"] / bare
                )
            at8 = ours[(8, 1)]
            out[f"{key}: p99 / p50 at c=8 (<= 2)"] = at8["p99_ms"] / at8["p50_ms"]
            if server == "grpc" and ("polymodal", m, LOADS[0]) in res:
                for load in LOADS:
                    http = res[("polymodal", m, load)]["items_per_s"]
                    out[f"{key} c={load[0]} x{load[1]}: items/s / HTTP's"] = (
                        ours[load]["items_per_s"] / http
                    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,large", help=f"of {sorted(MODELS)}")
    parser.add_argument(
        "--servers",
        default="plain,polymodal,direct",
        help="of plain,polymodal,grpc,split,direct,peer",
    )
    parser.add_argument(
        "--checkpoints",
        default="",
        help="NAME=CHECKPOINT,... trained checkpoints served instead of --models' fresh ones; "
        "with two, each load's items/s of the second over the first (a distilled student "
        "over its teacher)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke check)")
    parser.add_argument("--rounds", type=int, default=1, help="servers alternate, round by round")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs (torch threads) for each server's model and the offline limits",
    )
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs of polymodal's replica")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args()
    secs, warm = (1.5, 0.5) if args.quick else (6.0, 1.5)
    servers = args.servers.split(",")

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="pm-serve-bench-"))
    given = dict(x.split("=", 1) for x in args.checkpoints.split(",") if x)
    every: dict[tuple, dict] = {}
    targets = {}
    for name in given or args.models.split(","):
        checkpoint = Path(given[name]) if given else _checkpoint(MODELS[name], tmp / name)
        minilm = _text_tower(checkpoint) == "minilm"
        # MiniLM is fed real English (infinity's ground); the others distinct captions/images.
        values = {"text": english()} if minilm else _inputs(size=28)
        runs: dict[tuple, list[dict]] = {}
        starts: dict[tuple, list[dict]] = {}
        limits, bares = [], []
        for rnd in range(args.rounds):
            torch.set_num_threads(args.threads)  # the offline limits get a server's threads
            limits.append(
                {
                    m: offline_limit(checkpoint, values[m], m, args.max_batch_size, secs)
                    for m in values
                }
            )
            if minilm:
                bares.append(
                    bare_limit(pretrained_dir("minilm"), values["text"], args.max_batch_size, secs)
                )
            torch.set_num_threads(os.cpu_count() or 1)
            row = {"model": name, "round": rnd, "offline_items_per_s": limits[-1]}
            print(
                json.dumps(row | ({"bare_transformers_texts_per_s": bares[-1]} if bares else {})),
                flush=True,
            )
            for server in servers:
                if server == "peer" and not minilm:
                    continue
                proc = None
                if server in SPAWNED:
                    before = _mib_in_use()
                    proc, url, target = _spawn(server, checkpoint, args)
                    first = _wait_first(url, checkpoint.name, values["text"][0], proc, 600)
                    idle_from = _host_cpu_s()
                    time.sleep(5)  # what the server burns with nothing to do
                    idle = {"idle_cpu_pct": 100 * (_host_cpu_s() - idle_from) / 5}
                else:
                    port = _start_ray(direct=server == "direct")
                    url = _serve(checkpoint, server, args, port)
                try:
                    for modality in values:
                        for load in LOADS:
                            go = _load_grpc if server == "grpc" else _load
                            where = target if server == "grpc" else url
                            r = asyncio.run(
                                go(where, checkpoint.name, values[modality], load, secs, warm)
                            )
                            runs.setdefault((server, modality, load), []).append(r)
                            row = {"model": name, "round": rnd, "server": server, "route": modality}
                            row |= {"concurrency": load[0], "items_per_request": load[1]}
                            row |= {k: round(v, 2) for k, v in r.items()}
                            print(json.dumps(row), flush=True)
                    if proc is not None:
                        start = {"first_embedding_s": first} | idle
                        start |= _footprint(proc.pid, before)
                        starts.setdefault((name, server), []).append(start)
                        row = {"model": name, "round": rnd, "server": server}
                        print(
                            json.dumps(row | {k: round(v, 2) for k, v in start.items()}), flush=True
                        )
                finally:
                    if proc is not None:
                        _stop(proc)
                    else:
                        _stop_ray()
        res = {key: _median(rows) for key, rows in runs.items()}
        every |= {(name, *key): r for key, r in res.items()}
        limit = _median(limits)
        targets |= _targets(
            name,
            servers,
            values,
            limit,
            statistics.median(bares) if bares else None,
            res,
            {key: _median(rows) for key, rows in starts.items()},
        )
    if len(given) == 2:  # the second model's speed over the first's, load by load
        first_name, second = given
        for (name, server, m, load), r in every.items():
            if name == second:
                base = every[(first_name, server, m, load)]["items_per_s"]
                key = f"{second} / {first_name} {m} {server} c={load[0]} x{load[1]}: items/s"
                targets[key] = r["items_per_s"] / base
    for target, ratio in targets.items():
        print(json.dumps({"target": target, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
