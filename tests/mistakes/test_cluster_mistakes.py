"""Mistakes that meet a cluster: asking a cluster without GPUs for them (train, tune, serve)
fails at once with the numbers instead of waiting forever, and Ctrl-C stops a training run
promptly, giving back what it held."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY_TOWERS
from tests.mistakes.runner import assert_refused, run_cli

CONFIG = str(REPO / "jobs" / "configs" / "contrastive.yaml")
CHECKPOINT = str(REPO / "tests" / "fixtures" / "checkpoint-v1")


@pytest.fixture(scope="module")
def address(ray_cluster) -> str:
    return ray_cluster.get_runtime_context().gcs_address


def _run_args(dataset, tmp_path) -> list[str]:
    return [
        f"data.path={dataset}",
        f"train.storage_path={tmp_path}",
        "train.num_workers=1",
        *TINY_TOWERS,
    ]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_gpus_a_cluster_lacks_fail_at_once(command, address, digits_dataset, tmp_path):
    config = CONFIG if command == "train" else str(REPO / "jobs" / "configs" / "tune-digits.yaml")
    r = run_cli(
        command,
        config,
        *_run_args(digits_dataset, tmp_path),
        "train.use_gpu=true",
        "--address",
        address,
    )
    # Importing torch and building the model come first: seconds, not the forever of before.
    assert_refused(
        r, "train.use_gpu=true", "needs 1 GPU", "has 0 GPU", "cannot add nodes", within=60
    )


def test_serve_asks_for_gpus_the_cluster_lacks(address):
    r = run_cli("serve", CHECKPOINT, "--num-gpus", "1", "--replicas", "2", "--address", address)
    assert_refused(r, "--num-gpus 1 with --replicas 2", "needs 2 GPU", "--num-gpus 0", within=30)


def test_an_autoscaling_cluster_gets_a_bounded_wait(ray_cluster, monkeypatch, capsys):
    from polymodal import cluster
    from polymodal.config import load_config
    from polymodal.train.prepare import check_resources

    assert not cluster.can_grow()  # a local cluster reports its nodes as read-only types
    # As if an autoscaler could add nodes (none will here): it is asked, then given up on.
    monkeypatch.setattr(cluster, "can_grow", lambda: True)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"after 2 s the cluster has 0 GPU\. Add GPUs"):
        cluster.require([{"GPU": 1.0}], "this test", "Add GPUs.", wait_s=2, every_s=1)
    assert 2 <= time.monotonic() - start < 10
    progress = capsys.readouterr().out
    assert progress.count("waiting for the autoscaler: this test needs 1 GPU") == 2, progress
    # Workers that a fixed cluster refuses at once (check_cpus) are asked for and waited on.
    cfg = load_config(None, ["train.num_workers=64", "train.resources_wait_s=1"])
    with pytest.raises(TimeoutError, match="64 workers × train.cpus_per_worker=1, and a CPU"):
        check_resources(cfg)
    monkeypatch.setattr(cluster, "can_grow", lambda: False)
    with pytest.raises(ValueError, match="64 workers × train.cpus_per_worker 1 = 64 CPUs"):
        check_resources(cfg)
    # Elastic: the fewest workers it starts on are what must fit now.
    check_resources(load_config(None, ["train.num_workers=64", "train.min_workers=1"]))


def _on_a_terminal(cmd: list[str], env: dict) -> tuple[subprocess.Popen, list[bytes]]:
    """cmd with a pseudo-terminal (120 columns) for its stdout and stderr, as a person runs
    it; what it writes collects in the returned list."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)

    threading.Thread(target=read, daemon=True).start()
    return proc, chunks


def test_ctrl_c_stops_training_and_gives_back_its_cpus(address, digits_dataset, tmp_path):
    """On a terminal, as a person runs it: a progress bar over each epoch's steps, and Ctrl-C
    stops the run promptly."""
    import ray

    def free_cpus() -> float:
        return ray.available_resources().get("CPU", 0.0)

    before = free_cpus()  # other tests' actors may hold some
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    args = [*_run_args(digits_dataset, tmp_path), "train.epochs=200", "--address", address]
    cmd = [sys.executable, "-m", "polymodal.cli", "train", CONFIG, *args]
    proc, chunks = _on_a_terminal(cmd, env)
    run_dir = tmp_path / "contrastive"
    try:
        deadline = time.monotonic() + 240
        # Training is under way once the first epoch's checkpoint is in.
        while not list(run_dir.glob("checkpoint_*")) and time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(chunks)[-3000:]
            time.sleep(0.5)
        assert list(run_dir.glob("checkpoint_*")), "no checkpoint within 240 s"
        assert free_cpus() < before
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    time.sleep(0.5)  # the last output reaches the reader
    out = b"".join(chunks).decode(errors="replace")
    # tqdm's frames, drawn by the driver: "epoch 1/200:  40%|████    | 2.00/5.00 [00:01<..."
    assert re.search(r"epoch \d+/200: +\d+%\|.+?\| [\d.]+/[\d.]+ \[", out), out[-3000:]
    assert proc.returncode == 130, out[-3000:]
    assert stopped < 15, stopped
    assert "polymodal: stopped (Ctrl-C)" in out and "the same command resumes" in out
    # The driver's exit takes its Train controller and workers along.
    deadline = time.monotonic() + 30
    while free_cpus() < before:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)
