"""A real local Ray cluster shared by the integration tests (2 CPUs, like CI)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto) on 127.0.0.1. Started before Ray so that every
    Ray worker inherits the AWS_* settings that point its clients there and only there."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, metrics_port):
    import ray

    # Ray workers import test modules by name.
    paths = [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    temp_dir = tempfile.mkdtemp(prefix="ray-pm-", dir="/tmp")  # short: socket paths are limited
    ray.init(
        num_cpus=2,
        # The dashboard's State API frees a trial's placement group when ASHA stops it;
        # without it the next trial waits forever (costs ~2 s and ~0.9 GB).
        include_dashboard=True,
        _temp_dir=temp_dir,
        # Prometheus /metrics on this port, refreshed every second instead of every 10.
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={
            "env_vars": {
                "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            }
        },
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


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
