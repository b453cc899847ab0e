"""serve/config.yaml is a valid Serve config, and its builder accepts its args."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO


def test_config_yaml_validates_and_builds(tmp_path):
    from ray.serve.schema import ServeDeploySchema
    from serve.app import app

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    spec = schema.applications[0]
    names = {d.name for d in spec.deployments}
    assert names == {"Gateway", "Embedder"}
    for d in spec.deployments:
        assert d.max_ongoing_requests and d.max_queued_requests > 0
    assert app(spec.args) is not None  # builds the graph (no cluster needed)
    with pytest.raises(ValueError, match="unknown args"):
        app({**spec.args, "max_batch": 8})
