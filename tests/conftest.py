"""Shared fixtures: small real datasets written with the real ingest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"

# Quiet, local-only Ray for every test process and the workers it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits"
    ingest("builtin:digits", out, progress=False)
    return out


def write_tars(out: Path, rows, per_tar: int, damaged: dict[int, dict[str, bytes]] | None = None):
    """Real rows (RawRow) as img2dataset-style tars: key.png, key.txt, key.cls, key.json.
    damaged maps a row index to files that replace that sample's own. Returns the tar paths."""
    import io
    import json
    import tarfile

    damaged = damaged or {}
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar = None
    for i, row in enumerate(rows):
        if i % per_tar == 0:
            if tar:
                tar.close()
            paths.append(out / f"{len(paths):05d}.tar")
            tar = tarfile.open(paths[-1], "w")
        key = f"{len(paths) - 1:05d}{i % per_tar:04d}"
        files = {
            "png": row.values["image"],
            "txt": row.values["text"].encode(),
            "cls": str(row.label).encode(),
            "json": json.dumps({"key": key, "caption": row.values["text"]}).encode(),
        }
        files.update(damaged.get(i, {}))
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if tar:
        tar.close()
    return paths
