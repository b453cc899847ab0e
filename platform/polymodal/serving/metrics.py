"""Prometheus metrics of the service, recorded in the replicas with ray.util.metrics and
scraped from each Ray node's metrics export port (/metrics), beside Serve's ray_serve_*."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ray.util import metrics

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_SIZES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class GatewayMetrics:
    requests: metrics.Counter
    latency: metrics.Histogram


@dataclass
class EmbedderMetrics:
    batch_size: metrics.Histogram
    queue_depth: metrics.Gauge
    model_load: metrics.Histogram


@dataclass
class SearcherMetrics:
    latency: metrics.Histogram


@cache
def gateway_metrics() -> GatewayMetrics:
    """Created on first use, inside the replica process that records them."""
    return GatewayMetrics(
        requests=metrics.Counter(
            "polymodal_http_requests",
            description="HTTP requests by route and status code.",
            tag_keys=("route", "status"),
        ),
        latency=metrics.Histogram(
            "polymodal_http_request_duration_seconds",
            description="Time from request to response, by route.",
            boundaries=SECONDS,
            tag_keys=("route",),
        ),
    )


@cache
def embedder_metrics() -> EmbedderMetrics:
    return EmbedderMetrics(
        batch_size=metrics.Histogram(
            "polymodal_batch_size",
            description="Items per forward pass, by modality.",
            boundaries=BATCH_SIZES,
            tag_keys=("modality",),
        ),
        queue_depth=metrics.Gauge(
            "polymodal_queue_depth",
            description="Items waiting or being embedded in a model replica.",
            tag_keys=("replica",),
        ),
        model_load=metrics.Histogram(
            "polymodal_model_load_seconds",
            description="Time to fetch and load a checkpoint, by model.",
            boundaries=SECONDS,
            tag_keys=("model",),
        ),
    )


@cache
def searcher_metrics() -> SearcherMetrics:
    return SearcherMetrics(
        latency=metrics.Histogram(
            "polymodal_search_seconds",
            description="Exact top-k search over one index (the query already embedded), by "
            "model and modality of the index.",
            boundaries=[0.0005, 0.001, 0.0025, *SECONDS],  # small indexes answer in < 1 ms
            tag_keys=("model", "modality"),
        )
    )
