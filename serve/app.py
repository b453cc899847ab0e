"""Serve application builder: `serve run serve.app:app model_dir=runs/fashion` or
`serve deploy serve/config.yaml` (its `args` are validated as ServeArgs, then build the app)."""

# No `from __future__ import annotations`: Serve validates the args against the builder's
# parameter annotation only when that is the class itself, not its name as a string.
from ray.serve import Application

from polymodal.serving.app import build_app
from polymodal.serving.settings import ServeArgs


def app(args: ServeArgs) -> Application:
    return build_app(**args.model_dump())
