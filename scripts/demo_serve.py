"""The demo's last step: serve a checkpoint, call it over HTTP as an application would, print
what comes back. Run: .venv/bin/python scripts/demo_serve.py CHECKPOINT DATASET [INDEX_DIR]"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq

from polymodal.data.format import read_manifest
from polymodal.ports import free_port


def _call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def main(checkpoint: str, dataset: str, index_dir: str | None = None) -> int:
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [os.path.join(os.path.dirname(sys.executable), "polymodal"), "serve", checkpoint]
    cmd += ["--port", str(port), "--metrics-port", str(metrics_port)]
    cmd += ["--index-dir", index_dir] if index_dir else []
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                models = _call(f"{url}/v1/models")["data"]
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the service did not start", file=sys.stderr)
                    return 1
                time.sleep(1)
        model = models[0]["id"]
        print(f"serving {model} at {url} ({models[0]['dimension']}-d, {models[0]['modalities']})")
        print(f"  (while it runs: OpenAPI at {url}/docs, Prometheus at :{metrics_port}/metrics)")
        rows = pq.read_table(os.path.join(dataset, "val")).slice(0, 5).to_pylist()
        names = read_manifest(dataset).label_names
        images = ["data:image/png;base64," + base64.b64encode(r["image"]).decode() for r in rows]
        texts = [r["text"] for r in rows]
        start = time.perf_counter()
        out = _call(f"{url}/v1/embeddings", {"model": model, "input": images + texts})
        ms = 1000 * (time.perf_counter() - start)
        vectors = np.array([d["embedding"] for d in out["data"]])
        sims = vectors[:5] @ vectors[5:].T
        print(f"POST /v1/embeddings: 5 images + 5 captions in {ms:.0f} ms")
        for i, r in enumerate(rows):
            best = int(sims[i].argmax())
            print(f"  image {r['id']}: closest caption '{texts[best]}' (cos {sims[i, best]:.3f})")
        print("POST /v1/classify:")
        for r, image in zip(rows, images):
            got = _call(f"{url}/v1/classify", {"model": model, "inputs": {"image": image}})
            p = got["probabilities"][got["label"]]
            print(f"  image {r['id']} (true: {names[r['label']]}): {got['label']} (p={p:.2f})")
        if index_dir:
            print("POST /v1/search: captions -> the 5 closest validation images")
            for text in dict.fromkeys(texts):
                body = {"model": model, "query": text, "modality": "image", "k": 5}
                hits = _call(f"{url}/v1/search", body)["data"]
                found = ", ".join(f"{h['label']} ({h['score']:.2f})" for h in hits)
                print(f"  '{text}': {found}")
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
