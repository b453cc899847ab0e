"""The Serve application: build_app binds the gateway (with the models in it, or an embedder
deployment behind it) and, with an index_dir, the searcher; ServeArgs types its arguments."""

import os
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from polymodal.serving.embedder import Embedder
from polymodal.serving.gateway import RETRY_AFTER_S, Gateway
from polymodal.serving.searcher import Searcher


class ServeArgs(BaseModel):
    """The `args` that serve/config.yaml (or `serve run serve.app:app key=value ...`) may
    give build_app: its arguments of the same names, types and defaults, which Serve
    validates before building. Not api_key (a secret comes from POLYMODAL_API_KEY, never
    from a config file) nor access_log (the YAML sets Serve's own logging_config)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str  # a checkpoint or a directory of checkpoints, local or s3://
    max_batch_size: int = 32
    # Under load, how long a batch may wait to fill (a lone request never waits).
    batch_wait_timeout_s: float = 0.002
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    max_models: int = 4
    num_cpus: float = 0.5
    num_gpus: float = 0
    index_dir: str | None = None  # a directory of `polymodal index` outputs: POST /v1/search
    replicas: int = 1  # model replicas (the YAML's autoscaling_config overrides it)
    # The models in an Embedder deployment behind the gateway instead of in the gateway:
    # a second hop per batch, for model replicas that scale apart (GPUs) and a resend of
    # calls whose replica died.
    split: bool = False


def build_app(
    model_dir: str, api_key: str | None = None, access_log: bool = True, **settings: Any
) -> Application:
    """The Serve application: the gateway parses requests, gathers the items of concurrent
    ones for up to batch_wait_timeout_s or max_batch_size items' worth of work, and runs
    the model in the same replica (with split=True, calls an Embedder deployment instead).

    settings: ServeArgs' other fields, checked by it (one set of names, types and defaults).
    max_ongoing_requests: requests a model replica works on at once; kept >= max_batch_size,
    or Serve caps every batch at it. max_queued_requests: requests each caller may queue
    beyond that; the rest get 503 with Retry-After at once, never a hang. max_models:
    checkpoints kept loaded per replica (LRU). num_cpus, num_gpus: per model replica.
    api_key: require `Bearer api_key` (default: POLYMODAL_API_KEY, if set). access_log: one
    log line per request and call (turn off at high request rates). index_dir: a directory
    of `polymodal index` outputs (local or s3://) searched at POST /v1/search by a Searcher
    deployment, which holds them apart from the models. replicas: model replicas
    (serve/config.yaml autoscales instead)."""
    args = ServeArgs(model_dir=model_dir, **settings)
    api_key = api_key or os.environ.get("POLYMODAL_API_KEY") or None
    ongoing = max(args.max_ongoing_requests, args.max_batch_size)
    backpressure = {"status_code": 503, "retry_after_s": RETRY_AFTER_S}
    logging_config = {"enable_access_log": access_log}
    common = {
        "max_queued_requests": args.max_queued_requests,
        "backpressure_config": backpressure,
        "logging_config": logging_config,
    }
    models = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    searcher = None
    if args.index_dir:
        searcher = Searcher.options(
            max_ongoing_requests=ongoing,
            ray_actor_options={"num_cpus": args.num_cpus / 2},
            **common,
        ).bind(args.index_dir)
    # The gateway refuses requests beyond capacity itself (a JSON 503), before Serve's
    # own limit (a plain-text one) is reached.
    capacity = ongoing + args.max_queued_requests
    batching = (args.max_batch_size, args.batch_wait_timeout_s, args.max_models, capacity)
    if not args.split:
        return Gateway.options(
            max_ongoing_requests=capacity + 1,
            ray_actor_options=models,
            num_replicas=args.replicas,
            **common,
        ).bind(model_dir, api_key, *batching, searcher)
    embedder = Embedder.options(
        max_ongoing_requests=ongoing, ray_actor_options=models, num_replicas=args.replicas, **common
    ).bind(model_dir, args.max_batch_size, 0.0, args.max_models)
    # The gateway holds what the embedder queues, so overload surfaces as the embedder's
    # BackPressureError, answered in the API's JSON error shape.
    return Gateway.options(
        max_ongoing_requests=capacity + 1,
        ray_actor_options={"num_cpus": args.num_cpus / 2},
        **common,
    ).bind(model_dir, api_key, *batching, searcher, embedder)
