"""Datasets the integration tests damage or copy (the Ray cluster and S3 server are in
tests/conftest.py, shared with tests/reliability)."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO, free_port  # noqa: F401  (re-exported for the tests)

BAD_ROWS = 2  # rows of each kind in damaged_digits


def copy_dataset(src: Path, dst: Path) -> tuple[dict, dict[str, Path]]:
    """A copy of a local dataset to damage: its manifest, and each split's first shard."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    first = {s: dst / info["shards"][0]["path"] for s, info in manifest["splits"].items()}
    return manifest, first


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # 400 MP in a few hundred KB
    return buf.getvalue()


@pytest.fixture(scope="session")
def damaged_digits(digits_dataset, tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """A copy of digits with BAD_ROWS train rows of each bad kind: reason -> their ids."""
    data = tmp_path_factory.mktemp("bad") / "digits"
    _, first = copy_dataset(digits_dataset, data)
    shard = first["train"]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    damage = {
        "unreadable image": lambda r: r.update(image=b"\x89PNG truncated"),
        "image too large": lambda r: r.update(image=bomb),
        "empty text": lambda r: r.update(text=" "),
        "label out of range": lambda r: r.update(label=10),
        "no modality present": lambda r: r.update(image=None, text=None),
    }
    bomb = bomb_png()
    ids: dict[str, list[str]] = {}
    for k, (reason, change) in enumerate(damage.items()):
        for row in rows[100 * k : 100 * k + BAD_ROWS]:
            change(row)
            ids.setdefault(reason, []).append(row["id"])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    return data, ids


def call_json(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or a POST of `body` as JSON (or `raw` bytes), over HTTP;
    an error status comes back, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
