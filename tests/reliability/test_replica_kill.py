"""A Serve embedder replica killed with SIGKILL under steady load, in the split service
(models behind the gateway): requests keep being answered (the gateway resends a call whose
replica died), Serve replaces the replica, and the failed requests are counted — the target
is none beyond those in flight on it. (In the one-hop service the model replica is the
ingress: Serve's proxy answers its in-flight requests 500, which clients retry.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _embedder_replicas(app: str) -> list:
    from ray.util.state import list_actors

    from tests.conftest import session_address

    alive = list_actors(session_address(), filters=[("state", "=", "ALIVE")], limit=1000)
    return [
        a
        for a in alive
        if a.class_name.startswith("ServeReplica") and f":{app}:Embedder" in a.class_name
    ]


def test_killed_replica_under_load(ray_cluster, tmp_path):
    from ray import serve

    from polymodal.serving.app import build_app

    cfg = load_config(None, ["model.embed_dim=8", "model.text.width=16", "model.text.layers=1"])
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=16)
    save_checkpoint(
        tmp_path / "m",
        build_model(cfg, prep).eval(),
        RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict(), epoch=1, step=1),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(str(tmp_path), replicas=2, num_cpus=0.25, access_log=False, split=True),
        name="kill",
        route_prefix="/",
    )
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    body = json.dumps({"model": "m", "input": ["a cat", "a dog"]}).encode()
    statuses: Counter = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    statuses[resp.status] += 1
            except urllib.error.HTTPError as err:
                statuses[err.code] += 1
            except OSError:
                statuses["connection"] += 1

    try:
        replicas = _embedder_replicas("kill")
        assert len(replicas) == 2
        clients = [threading.Thread(target=client) for _ in range(4)]
        for t in clients:
            t.start()
        time.sleep(3)
        before = statuses[200]
        assert before > 0
        os.kill(replicas[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 60  # Serve's health check notices and starts another
        while time.monotonic() < deadline:
            alive = _embedder_replicas("kill")
            if len(alive) == 2 and replicas[0].pid not in {a.pid for a in alive}:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the killed replica was not replaced within 60 s")
        after_replacement = statuses[200]
        time.sleep(3)
        stop.set()
        for t in clients:
            t.join()
    finally:
        serve.shutdown()
    failed = sum(n for code, n in statuses.items() if code != 200)
    print(f"replica kill: {dict(statuses)}")
    assert statuses[200] > after_replacement > before  # served throughout, and after
    # At most the requests in flight when it died (one per client) may fail; with the
    # gateway's resend, normally none does.
    assert failed <= len(clients), dict(statuses)
