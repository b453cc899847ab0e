"""Serve application builder: `serve run serve.app:app model_dir=runs/fashion` or
`serve deploy serve/config.yaml` (its `args` are passed to build_app)."""

from __future__ import annotations

from polymodal.serving.deployments import build_app

# build_app's arguments that may come from the YAML's args, with their types.
ARGS = {
    "max_batch_size": int,
    "batch_wait_timeout_s": float,
    "max_ongoing_requests": int,
    "max_queued_requests": int,
    "max_models": int,
    "num_cpus": float,
    "num_gpus": float,
    "index_dir": str,  # a directory of `polymodal index` outputs: enables POST /v1/search
    "replicas": int,  # embedder replicas (the YAML's autoscaling_config overrides it)
}


def app(args: dict):
    """args: model_dir (a checkpoint or a directory of checkpoints, local or s3://), and
    any of ARGS."""
    if "model_dir" not in args:
        raise ValueError("serve.app needs model_dir=PATH (a checkpoint or a directory of them)")
    unknown = set(args) - set(ARGS) - {"model_dir"}
    if unknown:
        raise ValueError(f"serve.app: unknown args {sorted(unknown)} (known: {sorted(ARGS)})")
    return build_app(args["model_dir"], **{k: ARGS[k](v) for k, v in args.items() if k in ARGS})
