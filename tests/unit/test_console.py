"""What a command prints (polymodal/console.py): Ray's INFO and WARNING lines go to the
command's log file and not the terminal, and Ray Data draws no bars, unless --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAYS = """
import logging, ray, ray.data
from polymodal import console
ray.data.DataContext.get_current().enable_progress_bars = True  # as on a terminal
console.quiet()
logging.getLogger("ray.data").info("data-info")
logging.getLogger("ray").warning("ray-warning")
logging.getLogger("ray.train").error("train-error")
print("bars", ray.data.DataContext.get_current().enable_progress_bars)
print(console.tail())
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "POLYMODAL_VERBOSE"}
    env = {**base, "PYTHONPATH": str(REPO / "platform"), **env}
    log = tmp_path / "command.log"
    return subprocess.run(
        [sys.executable, "-c", SAYS],
        env={**env, "POLYMODAL_LOG_FILE": str(log)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rays_lines_go_to_the_log_file_and_errors_to_the_terminal(tmp_path):
    quiet = _run(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "train-error" in quiet.stderr
    assert "data-info" not in quiet.stderr and "ray-warning" not in quiet.stderr
    kept = (tmp_path / "command.log").read_text()
    assert "data-info" in kept and "ray-warning" in kept and "train-error" in kept
    assert "bars False" in quiet.stdout
    # An error's report shows them: the log's last lines, with its path.
    assert f"last lines of {tmp_path / 'command.log'}" in quiet.stdout
    assert "INFO ray.data: data-info" in quiet.stdout


def test_verbose_leaves_ray_as_it_is(tmp_path):
    loud = _run(tmp_path, POLYMODAL_VERBOSE="1")
    assert loud.returncode == 0, loud.stderr
    assert "data-info" in loud.stderr and "ray-warning" in loud.stderr
    assert "bars True" in loud.stdout and not (tmp_path / "command.log").exists()
