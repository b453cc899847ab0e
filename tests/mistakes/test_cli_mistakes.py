"""Mistakes a new user makes with `polymodal serve`'s options and with config values, each
refused by the real CLI within 3 s, before Ray starts, with the flag or key it is about."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.mistakes.runner import assert_refused, run_cli

CHECKPOINT = str(REPO / "tests" / "fixtures" / "checkpoint-v1")
CONFIG = str(REPO / "jobs" / "configs" / "contrastive.yaml")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """A directory of indexes as `polymodal index` lays them out (one, its index.json)."""
    root = tmp_path_factory.mktemp("indexes")
    (root / "digits-image").mkdir()
    (root / "digits-image" / "index.json").write_text("{}")
    return root


SERVE = [
    (["--port", "70000"], ["--port 70000", "1-65535"]),
    (["--port", "0"], ["--port 0", "1-65535"]),
    (["--metrics-port", "99999"], ["--metrics-port 99999"]),
    (["--port", "{free}", "--metrics-port", "{free}"], ["--metrics-port", "the same as --port"]),
    (["--max-models", "0"], ["--max-models 0", "must be >= 1"]),
    (["--replicas", "0"], ["--replicas 0", "must be >= 1"]),
    (["--max-batch-size", "-3"], ["--max-batch-size -3", "must be >= 1"]),
    (["--num-gpus", "-1"], ["--num-gpus -1", "must be >= 0"]),
    (["--index-dir", "/nonexistent/indexes"], ["--index-dir /nonexistent/indexes", "no such"]),
    (["--index-dir", "{index}"], ["this is one index", "give the directory that holds"]),
    (["--host", "nohost.invalid"], ["--host nohost.invalid", "not an address of this machine"]),
]


@pytest.mark.parametrize("flags,expect", SERVE, ids=[" ".join(f) for f, _ in SERVE])
def test_serve_options_are_refused_before_ray(flags, expect, index_dir):
    free = str(_free_port())
    flags = [f.format(free=free, index=index_dir / "digits-image") for f in flags]
    r = run_cli("serve", CHECKPOINT, *flags)
    assert_refused(r, *[e.format(free=free) for e in expect])
    assert "Ray" not in r.err  # refused before Ray started


def test_a_port_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", CHECKPOINT, "--port", str(port))
    assert_refused(r, f"--port {port}", "is taken", "choose another --port")


def test_a_directory_without_checkpoints_is_refused(tmp_path):
    assert_refused(run_cli("serve", str(tmp_path)), str(tmp_path), "no checkpoints")


COUNTS = [
    (["index", "C", "D", "O", "--actors", "0"], ["argument --actors: must be >= 1, got 0"]),
    (["index", "C", "D", "O", "--num-cpus", "0"], ["argument --num-cpus: must be > 0, got 0"]),
    (["index", "C", "D", "O", "--batch-size", "x"], ["--batch-size: 'x' is not an integer"]),
    (["index", "C", "D", "O", "--dimensions", "-8"], ["argument --dimensions: must be >= 1"]),
    (["data", "ingest", "S", "O", "--val-fraction", "1"], ["must be >= 0 and < 1, got 1"]),
    (["data", "ingest", "S", "O", "--rows-per-shard", "0"], ["--rows-per-shard: must be >= 1"]),
    (["data", "inspect", "D", "--rows", "-1"], ["argument --rows: must be >= 0, got -1"]),
    (["report", "R", "--rows", "0"], ["argument --rows: must be >= 1, got 0"]),
    (["serve", "C", "--resources-wait-s", "-1"], ["--resources-wait-s: must be >= 0"]),
]


@pytest.mark.parametrize("args,expect", COUNTS, ids=[" ".join(a) for a, _ in COUNTS])
def test_counts_and_fractions_are_checked_by_the_parser(args, expect):
    assert_refused(run_cli(*args), *expect)


CONFIG_MISTAKES = [
    (["train.tracking=[comet]"], ["train.tracking[0]", "tensorboard, mlflow, wandb", "comet"]),
    (["train.checkpoint_every_steps=-1"], ["train.checkpoint_every_steps", ">= 0"]),
    (["train.resources_wait_s=-5"], ["train.resources_wait_s", ">= 0"]),
]


@pytest.mark.parametrize("command", ["train", "tune", "validate"])
@pytest.mark.parametrize(
    "overrides,expect", CONFIG_MISTAKES, ids=[o[0] for o, _ in CONFIG_MISTAKES]
)
def test_config_values_are_refused_with_their_choices(command, overrides, expect):
    assert_refused(run_cli(command, CONFIG, *overrides), *expect)


def _free_port() -> int:
    from polymodal.ports import free_port

    return free_port()
