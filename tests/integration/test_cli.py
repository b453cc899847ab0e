"""The `polymodal` command as a user runs it: help, clear errors with exit code 2, eval."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymodal.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args,expect",
    [
        ([], "data"),
        (["data", "ingest"], "index.csv"),
        (["data", "inspect"], "schema"),
        (["train"], "key=value"),
        (["eval"], "checkpoint"),
        (["serve"], "model_dir"),
        (["index"], "index.json"),
    ],
)
def test_help_is_useful(args, expect):
    proc = _run(*args, "--help")
    assert proc.returncode == 0
    assert expect in proc.stdout


def test_bad_config_key_exits_2_with_suggestion(tmp_path):
    proc = _run("train", "jobs/configs/digits.yaml", "train.epoch=3")
    assert proc.returncode == 2
    assert "did you mean 'train.epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ingest_errors_name_the_row(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.csv").write_text("image,text\nnope.png,hello\n")
    proc = _run("data", "ingest", str(tmp_path / "src"), str(tmp_path / "out"), "--strict")
    assert proc.returncode == 2
    assert "row 2" in proc.stderr and "missing file 'nope.png'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_and_eval_from_the_command_line(digits_dataset, tmp_path):
    proc = _run("data", "inspect", str(digits_dataset), "--rows", "2")
    assert proc.returncode == 0 and "split val:" in proc.stdout
    proc = _run("eval", str(tmp_path), str(digits_dataset))
    assert proc.returncode == 2 and "not a polymodal checkpoint" in proc.stderr
