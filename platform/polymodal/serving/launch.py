"""How `polymodal serve` starts the service: the environment its embedded cluster starts with
(workers at a server's priority; a lone replica answering at the port itself), then the app."""

from __future__ import annotations

import os
from typing import Any

from polymodal.serving.settings import ServeArgs

# A serving cluster's workers run at the priority of any server: Ray's default (nice 15) let
# a busy neighbour take the model replica's CPU.
SERVE_ENV = {"RAY_worker_niceness": "0"}


def direct_ingress_env(port: int, grpc_port: int | None = None) -> dict[str, str]:
    """Serve's direct ingress for a one-replica service on this machine: the replica answers
    HTTP on `port` itself, with no proxy hop (the proxy fetches every request body with a
    second call to it: 1.5-2.5x the throughput without it, benchmarks/RESULTS.md). A replaced
    replica takes the same port again: no quarantine, no draining (no load balancer to tell),
    once the dead one's connections leave TIME_WAIT. With grpc_port, gRPC answers there."""
    env = {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    }
    if grpc_port:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"] = str(grpc_port)
        env["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"] = str(grpc_port + 1)
    return env


def set_cluster_env(direct: bool, port: int, grpc_port: int | None) -> None:
    """Read when the embedded cluster starts: call before ensure_ray."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    if direct:
        os.environ.update(direct_ingress_env(port, grpc_port))


def deploy(settings: ServeArgs, host: str, port: int, grpc_port: int | None, direct: bool) -> None:
    """Serve's HTTP (and, with grpc_port, gRPC) ingress and the app, running once this returns.
    Direct ingress keeps a proxy on the head node: it gets ports of its own."""
    from ray import serve

    from polymodal.ports import free_port
    from polymodal.serving.app import build_app
    from polymodal.serving.grpc_ingress import SERVICERS

    grpc: dict[str, Any] = {}
    if grpc_port:
        grpc_options = {"port": free_port() if direct else grpc_port}
        grpc = {"grpc_options": grpc_options | {"grpc_servicer_functions": SERVICERS}}
    serve.start(http_options={"host": host, "port": free_port() if direct else port}, **grpc)
    serve.run(build_app(**settings.model_dump()), route_prefix="/")
