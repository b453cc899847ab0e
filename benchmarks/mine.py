"""What mining costs beside embedding alone: `polymodal mine` against `polymodal embed` of the
same train split with the same checkpoint, at 1x and 10x the rows (Fashion-MNIST).

Run: .venv/bin/python benchmarks/mine.py [--rows 6000] [--scale 10] [--work DIR]
Each command runs as its own process (its own local Ray), one after the other; prints one
JSON line per size: seconds and rows/s of both, mine / embed, and each driver's peak RSS
(the driver holds the search and the writer; the embedding actors are Ray's workers), then
one line with the 10x / 1x ratios of time and of the mine driver's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import load_config
from polymodal.data.format import read_manifest
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model

CLI = [sys.executable, "-m", "polymodal.cli"]


def _checkpoint(out: Path) -> str:
    """An untrained fashion-sized model: mining's cost does not depend on its quality."""
    prep = Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=32)
    cfg = load_config(None, ["model.embed_dim=128"])
    torch.manual_seed(0)
    model = build_model(cfg, prep, num_classes=0).eval()
    meta = RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict(), epoch=1, step=1)
    save_checkpoint(out, model, meta)
    return str(out)


def _timed(args: list[str]) -> tuple[float, float]:
    """(seconds, the process's peak RSS in MiB) of a polymodal command run to completion."""
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run each in a fresh shell.
    probe = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe, *CLI, *args], capture_output=True, text=True, check=True
    )
    return time.perf_counter() - start, int(done.stdout.split()[-1]) / 1024


def _size(work: Path, checkpoint: str, rows: int) -> dict:
    data = work / f"fashion-{rows}"
    if not (data / "manifest.json").is_file():
        ingest = ["data", "ingest", "builtin:fashion-mnist", str(data), "--limit", str(rows)]
        subprocess.run([*CLI, *ingest], check=True, stdout=subprocess.DEVNULL)
    train = read_manifest(str(data)).rows("train")
    embed_s, embed_mib = _timed(["embed", checkpoint, str(data), str(work / f"emb-{rows}"),
                                 "--split", "train"])  # fmt: skip
    mine_s, mine_mib = _timed(["mine", checkpoint, str(data), str(work / f"mined-{rows}"),
                               "--anchor", "text", "--candidates", "image",
                               "--num-negatives", "3", "--range-max", "50"])  # fmt: skip
    return {
        "rows": train,
        "embed_s": round(embed_s, 1),
        "mine_s": round(mine_s, 1),
        "embed_rows_per_s": round(train / embed_s, 1),
        "mine_rows_per_s": round(train / mine_s, 1),
        "mine_over_embed_time": round(mine_s / embed_s, 3),
        "embed_driver_peak_mib": round(embed_mib),
        "mine_driver_peak_mib": round(mine_mib),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6000, help="rows of the 1x dataset (per split)")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--work", default=None, help="where datasets and outputs go (default: tmp)")
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = _checkpoint(work / "ckpt")
        sizes = [_size(work, checkpoint, n) for n in (args.rows, args.rows * args.scale)]
        for s in sizes:
            print(json.dumps(s), flush=True)
        one, many = sizes
        print(json.dumps({
            "scale": many["rows"] / one["rows"],
            "mine_time_ratio": round(many["mine_s"] / one["mine_s"], 2),
            "mine_driver_memory_ratio": round(
                many["mine_driver_peak_mib"] / one["mine_driver_peak_mib"], 2),
            "embed_driver_memory_ratio": round(
                many["embed_driver_peak_mib"] / one["embed_driver_peak_mib"], 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
