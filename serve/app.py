"""Serve application builder: `serve run serve.app:app model_dir=runs/fashion` or
`serve deploy serve/config.yaml` (its `args` are passed to build_app)."""

from __future__ import annotations

from polymodal.serving.deployments import build_app


def app(args: dict):
    """args: model_dir (a checkpoint or a directory of checkpoints), max_batch_size,
    batch_wait_timeout_s, max_ongoing_requests."""
    if "model_dir" not in args:
        raise ValueError("serve.app needs model_dir=PATH (a checkpoint or a directory of them)")
    return build_app(
        args["model_dir"],
        max_batch_size=int(args.get("max_batch_size", 32)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.01)),
        max_ongoing_requests=int(args.get("max_ongoing_requests", 64)),
    )
