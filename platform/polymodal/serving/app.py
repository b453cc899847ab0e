"""The Serve application: build_app binds the gateway (with the models in it, or an embedder
deployment behind it) and, with an index_dir, the searcher."""

import os
from typing import Any

from ray.serve import Application

from polymodal.serving.embedder import Embedder
from polymodal.serving.gateway import Gateway
from polymodal.serving.searcher import Searcher
from polymodal.serving.settings import BACKPRESSURE, ServeArgs, limits


def build_app(
    model_dir: str, api_key: str | None = None, access_log: bool = True, **settings: Any
) -> Application:
    """The Serve application: the gateway parses requests, gathers the items of concurrent
    ones for up to batch_wait_timeout_s or max_batch_size items' worth of work, and runs
    the model in the same replica (with split=True, calls an Embedder deployment instead).

    settings: ServeArgs' other fields, checked by it (their descriptions say what each does).
    api_key: require `Bearer api_key` (default: POLYMODAL_API_KEY, if set). access_log: one
    log line per request and call (turn off at high request rates)."""
    args = ServeArgs(model_dir=model_dir, **settings)
    api_key = api_key or os.environ.get("POLYMODAL_API_KEY") or None
    lim = limits(args)
    logging_config = {"enable_access_log": access_log}
    common = {
        "max_queued_requests": lim.queued,
        "backpressure_config": BACKPRESSURE,
        "logging_config": logging_config,
    }
    models = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    searcher = None
    if args.index_dir:
        searcher = Searcher.options(
            max_ongoing_requests=lim.ongoing,
            ray_actor_options={"num_cpus": args.num_cpus / 2},
            **common,
        ).bind(args.index_dir)
    batching = (args.max_batch_size, args.batch_wait_timeout_s, args.max_models, lim.capacity)
    if not args.split:
        return Gateway.options(
            max_ongoing_requests=lim.gateway_ongoing,
            ray_actor_options=models,
            num_replicas=args.replicas,
            **common,
        ).bind(model_dir, api_key, *batching, searcher)
    embedder = Embedder.options(
        max_ongoing_requests=lim.ongoing,
        ray_actor_options=models,
        num_replicas=args.replicas,
        **common,
    ).bind(model_dir, args.max_batch_size, 0.0, args.max_models)
    # The gateway holds what the embedder queues, so overload surfaces as the embedder's
    # BackPressureError, answered in the API's JSON error shape.
    return Gateway.options(
        max_ongoing_requests=lim.gateway_ongoing,
        ray_actor_options={"num_cpus": args.num_cpus / 2},
        **common,
    ).bind(model_dir, api_key, *batching, searcher, embedder)
