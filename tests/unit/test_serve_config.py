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


def test_config_yaml_validates_and_builds(tmp_path):
    from ray.serve.schema import ServeDeploySchema
    from serve.app import app

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    spec = schema.applications[0]
    names = {d.name for d in spec.deployments}
    assert names == {"Gateway", "Embedder", "Searcher"}
    for d in spec.deployments:
        assert d.max_ongoing_requests and d.max_queued_requests > 0
    assert app(spec.args) is not None  # builds the graph (no cluster needed)
    assert "Searcher" in _deployments(app(spec.args))  # the YAML's Searcher entry needs one
    without = {k: v for k, v in spec.args.items() if k != "index_dir"}
    assert "Searcher" not in _deployments(app(without))
    with pytest.raises(ValueError, match="unknown args"):
        app({**spec.args, "max_batch": 8})
