"""The service's settings (ServeArgs: build_app's arguments, serve/config.yaml's `args`) and the
request limits each deployment's replicas get from them (limits)."""

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

RETRY_AFTER_S = 1.0
# Serve's own answer when a replica's queue is full (the gateway answers before it; see Limits).
BACKPRESSURE = {"status_code": 503, "retry_after_s": RETRY_AFTER_S}
# How often Serve asks each replica whether it is alive: a dead one is replaced within ~2 s
# instead of Serve's default 10 (a check is one idle actor call).
HEALTH_CHECK_PERIOD_S = 2.0


class ServeArgs(BaseModel):
    """What serve/config.yaml's `args` (or `serve run serve.app:app key=value ...`) may give
    build_app, which Serve validates before building. Not api_key (a secret comes from
    POLYMODAL_API_KEY, never from a config file) nor access_log (the YAML sets Serve's own
    logging_config)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(description="a checkpoint or a directory of checkpoints, local or s3://")
    max_batch_size: int = Field(
        32,
        ge=1,
        description="items per forward pass, and full-size items' worth of work per batch (a "
        "large image counts as many)",
    )
    batch_wait_timeout_s: float = Field(
        0.002,
        ge=0,
        description="under load, how long a batch may wait to fill (a lone request never waits)",
    )
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="requests a model replica works on at once; raised to max_batch_size if "
        "below it, or Serve would cap every batch at it",
    )
    max_queued_requests: int = Field(
        256,
        ge=0,
        description="requests each caller may queue beyond max_ongoing_requests; the rest get "
        "503 with Retry-After at once, never a hang",
    )
    max_models: int = Field(4, ge=1, description="checkpoints kept loaded per replica (LRU)")
    num_cpus: float = Field(
        0.5,
        ge=0,
        description="CPUs per model replica (the gateway's and searcher's: half, when apart)",
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per model replica")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per model replica (default: num_cpus rounded up; Ray alone "
        "would give a replica of under 2 CPUs one thread)",
    )
    preload: list[str] | None = Field(
        None,
        description="checkpoints (names in model_dir) each replica loads and warms up before it "
        "takes requests; default: the first max_models of them. The rest load on first use",
    )
    index_dir: str | None = Field(
        None,
        description="a directory of `polymodal index` outputs (local or s3://), searched at "
        "POST /v1/search by a Searcher deployment that holds them apart from the models",
    )
    replicas: int = Field(
        1, ge=1, description="model replicas (serve/config.yaml's autoscaling_config overrides it)"
    )
    split: bool = Field(
        False,
        description="the models in an Embedder deployment behind the gateway instead of in it: "
        "a second hop per batch, for model replicas that scale apart (GPUs) and a resend of "
        "calls whose replica died",
    )


def torch_threads(args: ServeArgs) -> int:
    return args.threads or max(1, math.ceil(args.num_cpus))


# Every field's default, read by the deployments' decorators (model_dir has none: never read).
DEFAULTS = ServeArgs.model_construct(model_dir="")


@dataclass(frozen=True)
class Limits:
    """Requests a replica takes: Serve's limits per deployment and the gateway's own."""

    ongoing: int  # a model or searcher replica works on at once
    queued: int  # each caller may queue beyond that
    capacity: int  # a gateway replica takes before it answers 503 itself (in the API's shape)
    gateway_ongoing: int  # Serve's limit for a gateway replica: above capacity, so never reached


def limits(args: ServeArgs) -> Limits:
    ongoing = max(args.max_ongoing_requests, args.max_batch_size)
    capacity = ongoing + args.max_queued_requests
    return Limits(ongoing, args.max_queued_requests, capacity, capacity + 1)
