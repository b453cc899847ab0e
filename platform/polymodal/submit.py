"""Run polymodal commands as Ray jobs on a cluster through Ray's Job Submission API, and
list, follow, stop them: what `polymodal submit` and `polymodal jobs` call."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from polymodal import cluster, storage
from polymodal.config import load_config

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

# Job kinds and their entrypoint scripts under jobs/.
ENTRYPOINTS = {
    "train": "jobs/train.py",
    "tune": "jobs/tune.py",
    "embed": "jobs/embed.py",
    "index": "jobs/index.py",
    "mine": "jobs/mine.py",
}
# Kinds whose first argument is a config (validated here before anything is uploaded).
CONFIG_KINDS = ("train", "tune")
# Not uploaded with the working dir, beside what Ray always skips (.git, .venv) and what the
# checkout's .gitignore lists (data/, runs/, caches): datasets and runs belong on storage.
# Patterns apply to the shipped polymodal source too, so none may match a package name.
EXCLUDES = ["**/__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Settings every job's processes get (quiet Train V2, no usage reporting).
JOB_ENV = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def client(address: str | None) -> JobSubmissionClient:
    """A Job Submission client for http://HEAD:8265 (default: RAY_ADDRESS, then local)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def find_root(start: Path | None = None) -> Path:
    """The polymodal checkout holding jobs/ and platform/polymodal (the working dir)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "jobs").is_dir() and (d / "platform" / "polymodal").is_dir():
            return d
    raise FileNotFoundError(
        f"{here}: not inside a polymodal checkout (no jobs/ and platform/polymodal above it); "
        "run `polymodal submit` from the checkout whose code the job should run"
    )


def job_arguments(kind: str, args: list[str], root: Path) -> list[str]:
    """args with the config made relative to root (the job runs from root's copy); the
    config and its overrides are checked here, so a typo fails before any upload."""
    if kind not in ENTRYPOINTS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(ENTRYPOINTS)}")
    if kind not in CONFIG_KINDS:
        return list(args)
    if not args:
        raise ValueError(f"polymodal submit {kind} needs a CONFIG")
    config, overrides = Path(args[0]).resolve(), args[1:]
    if not config.is_file():
        raise FileNotFoundError(f"{args[0]}: no such config file")
    try:
        relative = config.relative_to(root)
    except ValueError:
        raise ValueError(
            f"{args[0]}: the config must be inside the working dir {root} (it is uploaded with it)"
        ) from None
    cfg = load_config(config, overrides)
    if kind == "tune":
        from polymodal.tune.space import check_tune

        check_tune(cfg)
    return [str(relative), *overrides]


def runtime_env(root: Path) -> dict:
    """The checkout as working dir (without data, runs, venvs) and polymodal's source as a
    module, so the cluster runs this code even where polymodal is not installed."""
    return {
        "working_dir": str(root),
        "excludes": EXCLUDES,
        "py_modules": [str(root / "platform" / "polymodal")],
        # S3 endpoint and region only: keys belong in the cluster's environment (a Secret).
        "env_vars": {**JOB_ENV, **cluster.job_settings(), **storage.public_settings()},
    }


def submit(
    kind: str,
    args: list[str],
    address: str | None = None,
    root: Path | None = None,
    entrypoint_num_cpus: float | None = None,
) -> tuple[JobSubmissionClient, str]:
    """Submit `python jobs/<kind>.py ARGS`; returns (client, job id)."""
    root = root or find_root()
    arguments = job_arguments(kind, args, root)
    entrypoint = shlex.join(["python", ENTRYPOINTS[kind], *arguments])
    jobs = client(address)
    job_id = jobs.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env(root),
        metadata={"polymodal": kind},
        entrypoint_num_cpus=entrypoint_num_cpus,
    )
    return jobs, job_id


def follow(jobs, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return wait(jobs, job_id, timeout_s=60)


def wait(jobs, job_id: str, timeout_s: float) -> str:
    """Poll until the job reaches a terminal status (or timeout_s passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1)


def format_jobs(details) -> str:
    """A table of jobs, newest first."""
    rows = sorted(details, key=lambda d: d.start_time or 0, reverse=True)
    lines = [f"{'job id':<28} {'status':<10} {'started':<19} entrypoint"]
    for d in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((d.start_time or 0) / 1000))
        entry = d.entrypoint if len(d.entrypoint) <= 80 else d.entrypoint[:77] + "..."
        job_id = d.submission_id or d.job_id
        lines.append(f"{job_id:<28} {d.status.value:<10} {started:<19} {entry}")
    return "\n".join(lines)


def format_status(info) -> str:
    fields = {
        "job id": info.submission_id,
        "status": info.status.value,
        "entrypoint": info.entrypoint,
        "message": info.message or "",
        "driver exit code": info.driver_exit_code,
    }
    return "\n".join(f"{k + ':':<17} {v}" for k, v in fields.items() if v not in (None, ""))
