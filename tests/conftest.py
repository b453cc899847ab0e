"""Shared fixtures: small real datasets written with the real ingest; a real local Ray
cluster (2 CPUs, like CI) and a real S3-compatible server on 127.0.0.1, started lazily."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from polymodal.cluster import RAY_ENV, api_server_env
from polymodal.ports import free_port

REPO = Path(__file__).resolve().parents[1]
# An image + text model small enough for one-process and gloo tests, every layer per sample
# (GroupNorm), with a reconstruction term; tests add the text layers and what they vary.
TINY_TOWERS = [
    "model.embed_dim=16",
    "model.image.width=4",
    "model.image.norm=group",
    "model.text.width=16",
    "model.text.heads=2",
    "objective.weights.reconstruction=0.5",
]
CONFIGS = REPO / "jobs" / "configs"

# Quiet, local-only Ray for every test process and the workers it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_USE_GRPC_BY_DEFAULT", "1")  # as polymodal's own clusters
# No test preempts a node, and Train's preemption watcher is one more actor process a run
# (~1.6 s of CPU of the ~30 a 1-epoch digits run costs on 2 cores).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# torch's OpenMP threads spin after each parallel region, waiting for the next; with several
# torch processes on 2 cores they spin on CPU the others need: 13% fewer core-seconds for the
# same tests sleeping instead (FSDP and gather tests, 83 -> 72; local-mode training, 68 -> 59).
# Read when torch loads: here, before any test imports it, for this process and its children.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# `make test` runs the suite in two processes (pytest -n 2 --dist loadgroup). One runs the
# tests that use the session's Ray cluster, one after the other (CPU-bound throughout). The
# other runs everything else beside them, in the CPU time the first leaves idle while its Ray
# processes wait on each other: the single-threaded CLI and unit checks, the tests with a
# cluster of their own or none, the distributed ones, and last the sweeps, on a session
# cluster started there: so each process has ~half the suite's ~1,750 core-seconds (with
# the sweeps and the distributed tests, the first had 987 s of tests, the second 563).
# xdist_group marks are lost under pytest 9, which ignores the nodeids xdist rewrites: the
# split is by path, checked below.
SESSION_CLUSTER_TESTS = (
    "tests/integration/",
    "tests/reliability/",
    "tests/mistakes/test_cluster_mistakes.py",
)
NO_SESSION_CLUSTER_TESTS = (  # in those folders, but with a cluster of their own or none
    "tests/integration/test_cli.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_harnesses.py",
    "tests/integration/test_serve_cli.py",
    "tests/reliability/test_node_kill.py",
)
SWEEPS = "tests/integration/test_tune.py"  # its own group: last in the other process


def session_address() -> str:
    """The session cluster's address, for Ray's State API: without one it looks for a single
    cluster on this host, and fails while a test in the other process runs its own."""
    import ray

    return ray.get_runtime_context().gcs_address


def _with_session_cluster(nodeid: str) -> bool:
    return nodeid.startswith(SESSION_CLUSTER_TESTS) and not nodeid.startswith(
        (*NO_SESSION_CLUSTER_TESTS, SWEEPS)
    )


def _rank(nodeid: str) -> int:
    """Run order: the session cluster's group first (one process takes it whole), then the
    other process's tests, the distributed ones, the sweeps."""
    if nodeid.startswith(SWEEPS):
        return 3
    if nodeid.startswith("tests/distributed/"):
        return 2
    return 0 if _with_session_cluster(nodeid) else 1


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SessionClusterTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SWEEPS):
                return "sweeps"
            return "session-cluster" if _with_session_cluster(nodeid) else nodeid

    # Groups in the order collected (by _rank), not largest first: the first process takes
    # the session cluster's group, the second the rest in turn, the sweeps last.
    config.option.loadscopereorder = False
    return SessionClusterTestsTogether(config, log)


def pytest_collection_modifyitems(config, items):
    stray = [i.nodeid for i in items if "ray_cluster" in i.fixturenames]
    stray = [n for n in stray if not (_with_session_cluster(n) or n.startswith(SWEEPS))]
    if stray:  # it would start a second session cluster beside the first
        raise pytest.UsageError(
            "these use the session's cluster: in tests/conftest.py, list them under "
            f"SESSION_CLUSTER_TESTS and not NO_SESSION_CLUSTER_TESTS: {stray}"
        )
    items.sort(key=lambda item: _rank(item.nodeid))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1. A test may stop it and start it
    again: its buckets live in this process and survive."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server):
    """s3_server's address. Set up before Ray so that every Ray worker inherits the AWS_*
    settings that point its clients there and only there."""
    host, port = s3_server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return endpoint


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
    dashboard = free_port()
    ray.init(
        num_cpus=2,
        # The dashboard's State API frees a trial's placement group when ASHA stops it;
        # without it the next trial waits forever (costs ~2 s and ~0.9 GB).
        include_dashboard=True,
        dashboard_port=dashboard,
        _temp_dir=temp_dir,
        # Prometheus /metrics on this port, refreshed every second instead of every 10.
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={
            # polymodal's own cluster settings (print once, poll workers often, ...)
            "env_vars": RAY_ENV
            | api_server_env(dashboard)  # the other test process may run a cluster too
            | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        },
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits"
    ingest("builtin:digits", out, progress=False)
    return out


@pytest.fixture(scope="session")
def spoken_digits_dataset(tmp_path_factory) -> Path:
    """The digits' captions with the spoken digit of their class (audio + text, no image)."""
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits-spoken"
    ingest("builtin:digits-spoken", out, progress=False)
    return out


@pytest.fixture(scope="session")
def trimodal_digits_dataset(tmp_path_factory) -> Path:
    """The digits with caption and the spoken digit of their class, some rows missing one."""
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits-trimodal"
    ingest("builtin:digits-trimodal", out, progress=False)
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
