"""Running the real `polymodal` command as a user would and checking how it refuses a mistake:
quickly, with a non-zero exit, one clear line naming what to fix, and no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.conftest import REPO


@dataclass
class Refusal:
    rc: int
    out: str
    err: str
    seconds: float


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 120) -> Refusal:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "polymodal.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    return Refusal(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def assert_refused(r: Refusal, *expect: str, within: float = 3.0) -> None:
    """Refused in time, with a non-zero exit, a `polymodal: error:` line, every expected
    phrase on stderr, and no traceback anywhere."""
    shown = f"rc={r.rc} in {r.seconds:.1f}s\nstdout:\n{r.out[-2000:]}\nstderr:\n{r.err[-3000:]}"
    assert r.rc != 0, shown
    assert "Traceback" not in r.err + r.out, shown
    # "polymodal: error:", or argparse's "polymodal index: error:" after the usage lines.
    assert re.search(r"^polymodal[a-z ]*: error: ", r.err, re.M), shown
    assert all(e in r.err for e in expect), shown
    # A slow host (2 shared cores) takes ~1 s to import the CLI; the bound is the issue's.
    assert r.seconds < within, shown
