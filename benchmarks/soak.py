"""A bounded soak of the embedding service: moderate steady load over real HTTP for a fixed
time, sampling every Serve replica's resident memory; prints JSON.

Run: .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 4]
Target (issue 9): no errors, and no replica's memory grows more than 10% from the first
minute (after warm-up) to the last. Requests mix texts (many distinct: a cache that never
evicts would show), images and both routes.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "fashion.yaml"


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _replicas() -> dict[str, int]:
    from ray.util.state import list_actors

    return {
        a.class_name: a.pid
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if a.class_name.startswith("ServeReplica")
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch
    from ray import serve

    from polymodal.checkpoint import RunMeta, save_checkpoint
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model
    from polymodal.serving.app import build_app

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    cfg = load_config(str(CONFIG), [])
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
    save_checkpoint(tmp / "models" / "soak", model, meta)

    ray.init(num_cpus=2, include_dashboard=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(tmp / "models"), access_log=False), route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    images = []
    for _ in range(32):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
        images.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())

    statuses: Counter = Counter()
    stop = threading.Event()

    def client(seed: int) -> None:
        r = np.random.default_rng(seed)
        n = 0
        while not stop.is_set():
            n += 1
            if n % 4 == 0:
                route = "/v1/classify"
                body = {"model": "soak", "inputs": {"image": images[n % 32].split(",", 1)[1]}}
            else:
                route = "/v1/embeddings"
                text = f"a photo of item {seed}-{n}-{int(r.integers(1e9))}"  # always new
                body = {"model": "soak", "input": [text, images[n % 32]]}
            req = urllib.request.Request(
                base + route, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()  # a client that hangs up early makes Serve cancel the request
                    statuses[resp.status] += 1
            except urllib.error.HTTPError as err:
                statuses[err.code] += 1
            except OSError:
                statuses["connection"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    samples: list[dict] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    warm = start + min(60.0, args.minutes * 6)  # memory after warm-up is the baseline
    while time.monotonic() < end:
        time.sleep(5)
        rss = {name: _rss_bytes(pid) for name, pid in _replicas().items()}
        samples.append({"t": round(time.monotonic() - start, 1), "rss": rss, "ok": statuses[200]})
    stop.set()
    for t in threads:
        t.join()
    serve.shutdown()
    ray.shutdown()

    baseline = next(s for s in samples if s["t"] >= warm - start)["rss"]
    last = samples[-1]["rss"]
    growth = {k: last[k] / baseline[k] - 1 for k in baseline if k in last and baseline[k]}
    errors = sum(n for code, n in statuses.items() if code != 200)
    seconds = samples[-1]["t"]
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "clients": args.clients,
                "requests": sum(statuses.values()),
                "requests_per_s": round(sum(statuses.values()) / seconds, 1),
                "statuses": {str(k): v for k, v in statuses.items()},
                "errors": errors,
                "rss_mb_after_warmup": {k: round(v / 2**20, 1) for k, v in baseline.items()},
                "rss_mb_end": {k: round(v / 2**20, 1) for k, v in last.items()},
                "rss_growth": {k: round(v, 4) for k, v in growth.items()},
                "target_met": errors == 0 and all(g <= 0.10 for g in growth.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
