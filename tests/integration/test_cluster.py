"""A real two-node Ray cluster (`ray start --head` + a second `ray start` on 127.0.0.1):
job submission, training on two sources (digit images, spoken digits; each global batch from
one) spread over both nodes with storage on S3, live metrics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
RUN = "two-nodes"


def _cluster_pids(temp_dir: str, gcs_port: int) -> set[int]:
    """Every process of the cluster: those naming its temp dir or GCS port, and their
    descendants (workers and agents rename themselves `ray::...`)."""
    parents, roots = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, IndexError, ValueError):
            continue
        if temp_dir in cmdline or f":{gcs_port}" in cmdline:
            roots.add(int(entry.name))
    pids, grew = set(roots), True
    while grew:
        children = {p for p, parent in parents.items() if parent in pids} - pids
        pids |= children
        grew = bool(children)
    return pids - {os.getpid()}


def _running(pid: int) -> bool:
    try:  # a zombie has exited: only its parent's wait() is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pids: set[int]) -> None:
    for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for pid in filter(_running, pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(map(_running, pids)):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint):
    """Head (2 CPUs, dashboard, metrics) and a worker node (2 CPUs, its own metrics port),
    started from this virtualenv with the S3 settings in their environment, as a Secret
    would put them on Kubernetes. Every port is chosen here: a second node on the same host
    must not collide with the first, nor with the tests' in-process cluster."""
    temp_dir = tempfile.mkdtemp(prefix="ray-2n-", dir="/tmp")  # short: socket paths are limited
    gcs, dashboard, head_metrics, node_metrics = (free_port() for _ in range(4))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # job entrypoints run `python`
        "RAY_metrics_report_interval_ms": "1000",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }

    def own_ports() -> list[str]:
        names = ("dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent")
        names += ("node-manager", "object-manager")
        return [a for n in names for a in (f"--{n}-port", str(free_port()))]

    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--disable-usage-stats"]
    try:
        subprocess.run(
            [BIN / "ray", "start", "--head", "--port", str(gcs), *common, *own_ports()]
            + ["--temp-dir", temp_dir, "--metrics-export-port", str(head_metrics)]
            + ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
            + ["--include-dashboard", "true", "--ray-client-server-port", str(free_port())],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [BIN / "ray", "start", "--address", f"127.0.0.1:{gcs}", *common, *own_ports()]
            + ["--metrics-export-port", str(node_metrics)],
            env=env,
            check=True,
            capture_output=True,
        )
        yield {
            "address": f"http://127.0.0.1:{dashboard}",
            "metrics": [f"http://127.0.0.1:{p}/metrics" for p in (head_metrics, node_metrics)],
            "env": env,
        }
    finally:
        _stop(_cluster_pids(temp_dir, gcs))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _polymodal(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "polymodal", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _scrape(urls: list[str], names: set[str]) -> dict[str, list]:
    """This run's samples of `names` from every node, by name."""
    found: dict[str, list] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in names and s.labels.get("run") == RUN:
                    found.setdefault(s.name, []).append(s)
    return found


def _watch(proc: subprocess.Popen, urls: list[str], names: set[str]) -> dict[str, list]:
    """Scrape while the job runs (a gauge disappears some seconds after it was last set);
    returns the latest samples of each name seen."""
    seen: dict[tuple, object] = {}  # (name, labels) -> its latest sample
    while proc.poll() is None:
        for name, samples in _scrape(urls, names).items():
            seen.update({(name, frozenset(s.labels.items())): s for s in samples})
        time.sleep(1)
    latest: dict[str, list] = {}
    for (name, _), sample in seen.items():
        latest.setdefault(name, []).append(sample)
    return latest


def test_submitted_training_spreads_over_two_nodes(two_nodes, s3_endpoint):
    import boto3
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    from polymodal import storage
    from polymodal.checkpoint import fetch_checkpoint, read_meta
    from polymodal.data.format import negatives_column, open_shard, read_manifest, shard_paths
    from polymodal.data.ingest import ingest
    from polymodal.evaluation.run import evaluate_checkpoint

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="cluster")
    ingest("builtin:digits", "s3://cluster/digits", rows_per_shard=500, progress=False)
    ingest("builtin:digits-spoken", "s3://cluster/spoken", limit=300, progress=False)
    sources = (
        "data.sources=[{path: s3://cluster/digits, name: images}, "
        "{path: s3://cluster/spoken, name: speech}]"
    )
    env, address = two_nodes["env"], two_nodes["address"]

    # A typo in an override fails here, before anything is uploaded.
    typo = _polymodal("submit", "train", "jobs/configs/digits.yaml", "train.epoch=2", env=env)
    assert typo.returncode == 2 and "did you mean 'train.epochs'" in typo.stderr

    names = {
        "ray_polymodal_train_loss",
        "ray_polymodal_train_samples_total",
        "ray_polymodal_train_samples_per_second",
        "ray_polymodal_train_data_wait_fraction",
        "ray_polymodal_train_epoch",
    }
    # Output to a file, not a pipe: nobody reads a pipe while the metrics are watched, and a
    # full one would block the streamed logs.
    with tempfile.TemporaryFile("w+") as log:
        with subprocess.Popen(
            [BIN / "polymodal", "submit", "train", "jobs/configs/digits-bind.yaml", sources]
            + ["data.mix=batches", "train.storage_path=s3://cluster/runs"]
            + [f"train.name={RUN}", "train.num_workers=2", "train.placement_strategy=SPREAD"]
            + ["train.epochs=2", "train.log_every_steps=5", "--address", address],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            live = _watch(proc, two_nodes["metrics"], names)
        log.seek(0)
        out = log.read()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    job_id = out.split("submitted train job ", 1)[1].split()[0]
    assert f"job {job_id}: SUCCEEDED" in out
    assert "[epoch 2/2] done" in out  # the driver's logs were streamed back
    # Each of rank 0's lines printed once. The two nodes share one log directory on this
    # host, so each node's log monitor forwards it: it arrives twice (four times with Train's
    # print patch on). Ray's INFO lines and Ray Data's bars stay off the terminal.
    shown = Counter(line for line in out.splitlines() if "[epoch 1/2]" in line)
    assert set(shown.values()) == {2} and any("step 5/" in line for line in shown), shown
    for noise in ("Reporting training result", "Running Dataset", "Starting execution"):
        assert noise not in out, noise
    checkpoint = out.split("checkpoint: ", 1)[1].split()[0]
    assert checkpoint.startswith(f"s3://cluster/runs/{RUN}/checkpoint_")

    # The two Train workers ran on different nodes.
    workers = list_actors(
        address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True
    )
    assert len(workers) == 2 and len({w.node_id for w in workers}) == 2

    # The checkpoint on S3 evaluates here, outside the cluster, to the metrics it recorded.
    recorded = read_meta(fetch_checkpoint(checkpoint))
    evaluated = evaluate_checkpoint(checkpoint)
    assert evaluated["val/accuracy"] == pytest.approx(recorded.metrics["val/accuracy"])
    assert evaluated["val/accuracy"] > 0.5  # 10 classes: chance is 0.1
    # Each source's own train loss and val recalls.
    assert recorded.metrics["train/loss/images"] > 0 and recorded.metrics["train/loss/speech"] > 0
    assert 0 <= recorded.metrics["val/speech/recall@5/text->audio"] <= 1
    assert recorded.metrics["train/paired/audio-image"] == 0

    # Training metrics, scraped live from the node where each rank ran.
    assert set(live) == names
    ranks = {s.labels["rank"] for s in live["ray_polymodal_train_samples_per_second"]}
    assert ranks == {"0", "1"}
    assert [s.value for s in live["ray_polymodal_train_epoch"]][0] in (1, 2)
    losses = {s.labels["term"]: s.value for s in live["ray_polymodal_train_loss"]}
    assert {"total", "contrastive", "reconstruction", "classification"} <= set(losses)
    assert 0 < losses["classification"] < losses["total"] < 20
    for s in live["ray_polymodal_train_samples_per_second"]:
        assert s.value > 0
    for s in live["ray_polymodal_train_data_wait_fraction"]:
        assert 0 <= s.value <= 1
    # Counters outlive the workers: every sample each rank trained on was counted.
    step = recorded.step
    final = _scrape(two_nodes["metrics"], {"ray_polymodal_train_samples_total"})
    counted = {s.labels["rank"]: s.value for s in final["ray_polymodal_train_samples_total"]}
    assert counted == {"0": step * 32, "1": step * 32}  # global batch 64 over 2 ranks

    # jobs list / status / logs see the finished job.
    listed = _polymodal("jobs", "list", "--address", address, env=env)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = _polymodal("jobs", "status", job_id, "--address", address, env=env)
    assert "SUCCEEDED" in status.stdout and "jobs/train.py" in status.stdout
    logs = _polymodal("jobs", "logs", job_id, "--address", address, env=env)
    assert "[epoch 1/2] done" in logs.stdout
    missing = _polymodal("jobs", "status", "raysubmit_nosuchjob", "--address", address, env=env)
    assert missing.returncode == 2 and "raysubmit_nosuchjob" in missing.stderr

    # Ray's own CLI runs the thin entrypoints too (polymodal is installed on these nodes):
    # embed the val split with the checkpoint, on the cluster, into S3.
    plain = subprocess.run(
        [BIN / "ray", "job", "submit", "--address", address, "--working-dir", "."]
        + ["--", "python", "jobs/embed.py", checkpoint, "s3://cluster/digits"]
        + ["s3://cluster/embeddings", "--split", "val"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, (plain.stdout + plain.stderr)[-3000:]
    assert "succeeded" in plain.stdout.lower()
    fs, path = storage.resolve("s3://cluster/embeddings")
    embedded = pq.read_table(path, filesystem=fs)
    assert embedded.num_rows == read_manifest("s3://cluster/digits").splits["val"]["rows"]

    # Hard negatives mined on the cluster, from S3 into S3, submitted as polymodal's job.
    mined = _polymodal(
        *("submit", "mine", checkpoint, "s3://cluster/digits", "s3://cluster/mined"),
        *("--anchor", "text", "--candidates", "image", "--num-negatives", "2"),
        *("--address", address),
        env=env,
    )
    assert mined.returncode == 0, (mined.stdout + mined.stderr)[-3000:]
    manifest = read_manifest("s3://cluster/mined")
    assert manifest.extra["negatives"]["text->image"]["num_negatives"] == 2
    uri = shard_paths("s3://cluster/mined", manifest, "train")[0]
    lists = open_shard(uri).read(columns=[negatives_column("text->image")]).column(0)
    assert all(len(v) == 2 for v in lists.to_pylist())

    # A job stopped while it runs (or before it starts) ends STOPPED.
    queued = _polymodal(
        *("submit", "train", "jobs/configs/digits.yaml", "data.path=s3://cluster/digits"),
        *("train.storage_path=s3://cluster/runs", "train.name=stopped", "train.epochs=50"),
        *("--no-wait", "--address", address),
        env=env,
    )
    stop_id = queued.stdout.split("submitted train job ", 1)[1].split()[0]
    stopped = _polymodal("jobs", "stop", stop_id, "--address", address, env=env)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    jobs, deadline = JobSubmissionClient(address), time.monotonic() + 60
    while jobs.get_job_status(stop_id) != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.5)  # the SDK here: each `polymodal jobs status` is a process start
    status = _polymodal("jobs", "status", stop_id, "--address", address, env=env).stdout
    assert "STOPPED" in status
