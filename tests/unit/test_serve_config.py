"""serve/config.yaml is a valid Serve config, and its builder accepts its args."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO


def _deployments(application) -> set[str]:
    """Names of the deployments bound in an application (the ingress and what it holds)."""
    from ray.serve.deployment import Application

    seen, todo = set(), [application]
    while todo:
        node = todo.pop()
        deployment = node._bound_deployment
        seen.add(deployment.name)
        args = [*deployment.init_args, *deployment.init_kwargs.values()]
        todo += [a for a in args if isinstance(a, Application)]
    return seen


def _build(args: dict):
    """The application as `serve run` and `serve deploy` build it: Serve validates the args
    against the builder's annotation (ServeArgs), then calls it."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from serve.app import app

    return call_user_app_builder_with_args_if_necessary(app, args)


def test_config_yaml_validates_and_builds(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    spec = schema.applications[0]
    names = {d.name for d in spec.deployments}
    assert names == {"Gateway", "Searcher"}
    for d in spec.deployments:
        assert d.max_ongoing_requests and d.max_queued_requests > 0
    assert _build(spec.args) is not None  # builds the graph (no cluster needed)
    assert "Searcher" in _deployments(_build(spec.args))  # the YAML's Searcher entry needs one
    without = {k: v for k, v in spec.args.items() if k != "index_dir"}
    assert "Searcher" not in _deployments(_build(without))
    assert "Embedder" in _deployments(_build({**spec.args, "split": True}))
    with pytest.raises(ValueError, match="max_batch\n.*Extra inputs are not permitted"):
        _build({**spec.args, "max_batch": 8})


def test_builder_args_are_typed():
    from polymodal.serving.app import ServeArgs

    with pytest.raises(ValueError, match="max_batch_size\n.*valid integer"):
        _build({"model_dir": "m", "max_batch_size": "eight"})
    with pytest.raises(ValueError, match="model_dir\n.*Field required"):
        _build({"max_batch_size": 8})
    # `serve run serve.app:app max_batch_size=8` passes strings: numbers still convert
    args = ServeArgs.model_validate({"model_dir": "m", "max_batch_size": "8", "num_gpus": "1"})
    assert args.max_batch_size == 8 and args.num_gpus == 1.0


def test_build_app_takes_its_settings_through_serve_args():
    """build_app's settings are ServeArgs' fields (one set of names, types and defaults); only
    what a config file must not set (api_key, access_log) is build_app's own."""
    import inspect

    from pydantic import ValidationError

    from polymodal.serving.app import ServeArgs, build_app

    params = inspect.signature(build_app).parameters
    assert list(params) == ["model_dir", "api_key", "access_log", "settings"]
    assert (
        "model_dir" in ServeArgs.model_fields and ServeArgs.model_fields["model_dir"].is_required()
    )
    with pytest.raises(ValidationError, match="max_batch\n.*Extra inputs are not permitted"):
        build_app("m", max_batch=8)
    with pytest.raises(ValidationError, match="max_batch_size\n.*valid integer"):
        build_app("m", max_batch_size="eight")
