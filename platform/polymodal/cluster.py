"""Connecting to Ray: the cluster at an address (or RAY_ADDRESS), else an embedded local one.
Every command that runs Ray work (train, tune, ingest, validate, serve, embed, index) calls it."""

from __future__ import annotations

import json
import math
import os

from polymodal import storage

RAY_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Serve's proxy talks to replicas over gRPC: 6.5 instead of 9.4 ms of CPU per request
    # (benchmarks/serve.py). Read when the cluster starts, so set before ray.init.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}


def ensure_ray(
    address: str | None = None, min_cpus: float = 1, metrics_port: int | None = None
) -> None:
    """Connect to `address` / RAY_ADDRESS, or start an embedded local cluster (with
    Prometheus /metrics on metrics_port, when given)."""
    import ray  # here: importing ray takes seconds, and commands check their inputs first

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # S3 endpoint and region go along; keys must already be on the cluster's nodes. In a
        # submitted job, Ray refuses a variable that the job's runtime env already sets.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
        settings = {k: v for k, v in storage.public_settings().items() if k not in job_env}
        ray.init(address=address, runtime_env={"env_vars": settings} if settings else None)
        return
    # Logical CPUs: what the caller needs (training: one per worker plus one for Ray Data's
    # decoding). With only the physical count (2 here) workers take every CPU and reading
    # never starts.
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
        runtime_env={"env_vars": RAY_ENV},
        _metrics_export_port=metrics_port,
    )
