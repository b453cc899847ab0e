"""Connecting to Ray: the cluster at an address (or RAY_ADDRESS), else an embedded local one.
Every command that runs Ray work (train, tune, ingest, validate, serve, embed, index) calls it."""

from __future__ import annotations

import json
import math
import os

from polymodal import console, storage
from polymodal.ports import this_or_free_port

# Read by the job's own workers, so set on any cluster (the job's runtime env).
JOB_ENV = {
    # Train V2 sends a worker's print to its logger and to stdout both: every line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Train's controller polls its workers every 2 s: a run ended ~2 s before it noticed
    # (digits, 1 epoch: 17.8 -> 16.1 s a run). Polling 5 times a second costs nothing seen.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
RAY_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Serve's proxy talks to replicas over gRPC: 6.5 instead of 9.4 ms of CPU per request
    # (benchmarks/serve.py). Read when the cluster starts, so set before ray.init.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    **JOB_ENV,
}


def job_settings() -> dict[str, str]:
    """What a job's processes read on any cluster: JOB_ENV and the command's --verbose."""
    return JOB_ENV | console.job_env()


def ensure_ray(
    address: str | None = None,
    min_cpus: float = 1,
    metrics_port: int | None = None,
    dashboard: bool = True,
) -> None:
    """Connect to `address` / RAY_ADDRESS, or start an embedded local cluster (with
    Prometheus /metrics on metrics_port, when given; without Ray's dashboard when not
    `dashboard`: its head and modules are 11 processes and ~300 MB)."""
    import ray  # here: importing ray takes seconds, and commands check their inputs first

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    console.quiet()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # S3 endpoint and region go along; keys must already be on the cluster's nodes. In a
        # submitted job, Ray refuses a variable that the job's runtime env already sets.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
        wanted = job_settings() | storage.public_settings()
        settings = {k: v for k, v in wanted.items() if k not in job_env}
        ray.init(address=address, runtime_env={"env_vars": settings} if settings else None)
        return
    # Ray's own default (8265) where free; chosen here to name it to the workers
    port = this_or_free_port(8265) if dashboard else None
    # Logical CPUs: what the caller needs (training: one per worker plus one for Ray Data's
    # decoding). With only the physical count (2 here) workers take every CPU and reading
    # never starts.
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
        runtime_env={"env_vars": RAY_ENV | job_settings() | api_server_env(port)},
        include_dashboard=dashboard,
        dashboard_port=port,
        _metrics_export_port=metrics_port,
    )


def api_server_env(dashboard_port: int | None) -> dict[str, str]:
    """For the workers of a cluster started here: its State API's address. Ray's own calls
    in them (Train's placement-group cleaner, which frees the workers of a trial that Tune
    stopped) otherwise look for "the" cluster on this host, and fail while there are two."""
    if dashboard_port is None:
        return {}
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}


def can_grow() -> bool:
    """Whether an autoscaler may add nodes: autoscaler v2, or v1 with node types of its own
    (without a provider, Ray's monitor reports each node as a read-only type of its own)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        if is_autoscaler_v2(fetch_from_server=True):
            return True
        status = _internal_kv_get("__autoscaling_status")
    except Exception:  # internal APIs: if they move, the cluster counts as fixed
        return False
    report = json.loads(status).get("autoscaler_report") or {} if status else {}
    types = (report.get("node_type_mapping") or {}).items()
    return any(kind != f"node_{node}" for node, kind in types)


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items())) or "none"


def require(
    bundles: list[dict[str, float]], what: str, fix: str, wait_s: float = 0.0, every_s: float = 15
) -> None:
    """Fail at once, with the numbers and `fix`, when the cluster lacks what `bundles` add
    up to and cannot grow. An autoscaling cluster is asked for them and given wait_s, with
    a progress line every every_s; then the same failure. Without this, Ray waits forever."""
    import time

    import ray

    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value

    def short() -> dict[str, float]:
        have = ray.cluster_resources()
        return {k: have.get(k, 0.0) for k, v in need.items() if have.get(k, 0.0) < v}

    missing = short()
    if not missing:
        return
    has = f"{what} needs {_amounts(need)}; the cluster has {_amounts(missing)}"
    if not can_grow():
        raise ValueError(f"{has} and cannot add nodes. {fix}")
    if wait_s <= 0:
        raise ValueError(f"{has}. {fix}")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    start = time.monotonic()
    try:
        while missing and time.monotonic() - start < wait_s:
            waited = time.monotonic() - start
            print(f"waiting for the autoscaler: {has} ({waited:.0f} of {wait_s:g} s)", flush=True)
            deadline = min(wait_s, waited + every_s)
            while (missing := short()) and time.monotonic() - start < deadline:
                time.sleep(1)
    finally:
        request_resources(bundles=[])  # a standing request would keep nodes up for nothing
    if missing:
        raise TimeoutError(
            f"{what} needs {_amounts(need)}; after {wait_s:g} s the cluster has "
            f"{_amounts(missing)}. {fix}"
        )
