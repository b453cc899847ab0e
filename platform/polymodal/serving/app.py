"""The Serve application: build_app binds the gateway with its model server (the models in the
gateway's replica, or the Embedder deployment behind it) and, given an index_dir, the searcher."""

import os
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from polymodal.serving.embedder import Embedder, EmbedderDeployment, ModelServer
from polymodal.serving.gateway import GatewayDeployment
from polymodal.serving.remote import RemoteEmbedder
from polymodal.serving.searcher import SearcherDeployment
from polymodal.serving.settings import ServeArgs, limits, torch_threads


def build_app(
    model_dir: str, api_key: str | None = None, access_log: bool = True, **settings: Any
) -> Application:
    """The Serve application: the gateway parses requests, gathers the items of concurrent
    ones for up to batch_wait_timeout_s or max_batch_size items' worth of work, and runs the
    models in its own replica (with split=True, calls an Embedder deployment instead).

    settings: ServeArgs' other fields, checked by it (their descriptions say what each does).
    api_key: require `Bearer api_key` (default: POLYMODAL_API_KEY, if set). access_log: one
    log line per request and call (turn off at high request rates)."""
    args = ServeArgs(model_dir=model_dir, **settings)
    api_key = api_key or os.environ.get("POLYMODAL_API_KEY") or None
    lim = limits(args)
    logging_config = {"enable_access_log": access_log}
    models = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    searcher = None
    if args.index_dir:
        searcher = SearcherDeployment.options(
            max_ongoing_requests=lim.ongoing,
            max_queued_requests=lim.queued,
            ray_actor_options={"num_cpus": args.num_cpus / 2},
            logging_config=logging_config,
        ).bind(index_dir=args.index_dir)
    batching: dict[str, Any] = {
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }
    loading: dict[str, Any] = {
        "max_models": args.max_models,
        "threads": torch_threads(args),
        "preload": args.preload,
    }
    model_server: Callable[[], ModelServer]
    gateway: dict[str, Any]
    # The one place that chooses where the models run. The gateway makes its model server in
    # its own replica (Embedder's models and metrics live in the process that uses them).
    if args.split:
        embedder = EmbedderDeployment.options(
            max_ongoing_requests=lim.ongoing,
            max_queued_requests=lim.queued,
            ray_actor_options=models,
            num_replicas=args.replicas,
            logging_config=logging_config,
        ).bind(
            model_dir=model_dir,
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=0.0,  # the gateway has gathered the batch already
            **loading,
        )
        # Serve hands the gateway a handle where the bound deployment stands.
        handle = cast(DeploymentHandle, embedder)
        model_server = partial(RemoteEmbedder, embedder=handle, **batching)
        gateway = {"ray_actor_options": {"num_cpus": args.num_cpus / 2}}
    else:
        model_server = partial(Embedder, model_dir=model_dir, **loading, **batching)
        gateway = {"ray_actor_options": models, "num_replicas": args.replicas}
    return GatewayDeployment.options(
        max_ongoing_requests=lim.gateway_ongoing,
        max_queued_requests=lim.queued,
        logging_config=logging_config,
        **gateway,
    ).bind(
        model_dir=model_dir,
        model_server=model_server,
        searcher=searcher,
        api_key=api_key,
        capacity=lim.capacity,
    )
