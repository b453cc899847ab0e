"""serve/config.yaml is a valid Serve config, and its builder accepts its args."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO


def _deployments(application) -> dict:
    """Name -> Deployment of each deployment in an application, as Serve builds it (the
    ingress and every deployment bound anywhere in its arguments)."""
    from ray.serve._private.build_app import build_app

    return {d.name: d for d in build_app(application, name="polymodal").deployments}


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
    assert _build(spec.args) is not None  # builds the graph (no cluster needed)
    assert set(_deployments(_build(spec.args))) == names  # the YAML's Searcher entry needs one
    without = {k: v for k, v in spec.args.items() if k != "index_dir"}
    assert set(_deployments(_build(without))) == {"Gateway"}
    assert set(_deployments(_build({**spec.args, "split": True}))) == {*names, "Embedder"}
    with pytest.raises(ValueError, match="max_batch\n.*Extra inputs are not permitted"):
        _build({**spec.args, "max_batch": 8})


def test_config_yaml_sets_nothing_the_code_derives():
    """A deployment setting in the YAML overrides the code's silently: the YAML's deployments
    set only what neither build_app (from the args) nor the deployment classes set."""
    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (application,) = raw["applications"]
    for split in (False, True):
        built = _deployments(_build({**application["args"], "split": split}))
        for entry in application["deployments"]:
            if entry["name"] not in built:
                continue
            in_code = built[entry["name"]]._deployment_config.user_configured_option_names
            assert not (set(entry) - {"name"}) & in_code, (entry["name"], in_code)


def test_limits_follow_the_args():
    """Each replica takes at least a batch; the gateway answers 503 itself (its JSON error)
    one request before Serve's own limit (a plain-text one) is reached; the classes'
    defaults are build_app's with ServeArgs' defaults."""
    from polymodal.serving.app import build_app
    from polymodal.serving.embedder import EmbedderDeployment
    from polymodal.serving.gateway import GatewayDeployment
    from polymodal.serving.searcher import SearcherDeployment

    args = {"max_batch_size": 100, "max_ongoing_requests": 64, "max_queued_requests": 10}
    built = _deployments(build_app("m", index_dir="i", split=True, **args))
    assert built["Embedder"].max_ongoing_requests == built["Searcher"].max_ongoing_requests == 100
    assert built["Gateway"].max_ongoing_requests == 100 + 10 + 1
    assert all(d.max_queued_requests == 10 for d in built.values())
    assert built["Gateway"].init_kwargs["capacity"] == 100 + 10
    defaults = _deployments(build_app("m", index_dir="i", split=True))
    for deployment in (GatewayDeployment, EmbedderDeployment, SearcherDeployment):
        bound = defaults[deployment.name]
        assert deployment.max_ongoing_requests == bound.max_ongoing_requests
        assert deployment.max_queued_requests == bound.max_queued_requests
        assert deployment._deployment_config.backpressure_config.status_code == 503


def test_builder_args_are_typed():
    from polymodal.serving.settings import ServeArgs

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

    from polymodal.serving.app import build_app
    from polymodal.serving.settings import ServeArgs

    params = inspect.signature(build_app).parameters
    assert list(params) == ["model_dir", "api_key", "access_log", "settings"]
    assert all(field.description for field in ServeArgs.model_fields.values())  # one place
    assert (
        "model_dir" in ServeArgs.model_fields and ServeArgs.model_fields["model_dir"].is_required()
    )
    with pytest.raises(ValidationError, match="max_batch\n.*Extra inputs are not permitted"):
        build_app("m", max_batch=8)
    with pytest.raises(ValidationError, match="max_batch_size\n.*valid integer"):
        build_app("m", max_batch_size="eight")
