"""The embedding server users deploy instead of ours (infinity-emb, in a virtualenv of its own,
since it pins its own torch), the offline limit it is held to, and the text both are fed.

Used by benchmarks/serve.py (--servers peer, --models minilm); run alone it installs the peer:
.venv/bin/python benchmarks/peer.py
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-peer"
PEER = "infinity-emb[server,torch]==0.0.78"


def peer_venv() -> Path:
    """infinity's own virtualenv (made on first use) → its `infinity_emb` command."""
    exe = VENV / "bin" / "infinity_emb"
    if not exe.exists():
        print(f"installing {PEER} into {VENV.name} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        done = subprocess.run([*pip, PEER], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"pip install {PEER} failed:\n{done.stderr[-3000:]}")
    return exe


def spawn_peer(model_dir: Path, name: str, port: int, threads: int) -> subprocess.Popen:
    """infinity serving the Hugging Face model in model_dir as `name` at /v1/embeddings, with
    the batch size and threads polymodal gets (OMP_NUM_THREADS, as its docs advise on CPU)."""
    cmd = [str(peer_venv()), "v2", "--model-id", str(model_dir), "--served-model-name", name]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"]
    cmd += ["--device", "cpu", "--engine", "torch", "--batch-size", "32"]
    cmd += ["--no-vector-disk-cache", "--no-compile"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def english(n: int = 2000) -> list[str]:
    """Distinct English sentences of 8-30 words, in a fixed order: the Python reference's prose
    (shipped with Python) and the licence texts a Debian system carries."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    texts += [
        Path(f).read_text(errors="ignore")
        for f in sorted(glob.glob("/usr/share/common-licenses/*"))
    ]
    flat = " ".join(" ".join(texts).split())
    found = [
        s
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat)
        if 8 <= len(s.split()) <= 30
        and s.isascii()
        and sum(c.isalpha() or c == " " for c in s) > 0.9 * len(s)
    ]
    return list(dict.fromkeys(found))[:n]


def bare_limit(model_dir: Path, texts: list[str], batch: int, secs: float) -> float:
    """Texts/s of bare transformers (tokenize padded to the batch's longest, forward, mean
    pooling) in batches of `batch`, in this process: the most any server of this model can do."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    @torch.inference_mode()
    def embed(rows: list[str]) -> torch.Tensor:
        enc = tok(rows, padding=True, truncation=True, max_length=128, return_tensors="pt")
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1)

    embed(texts[:batch])
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < secs:
        rows = [texts[(i + j) % len(texts)] for j in range(batch)]
        embed(rows)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - start)


if __name__ == "__main__":
    print(peer_venv())
