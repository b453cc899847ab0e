"""A real local Ray cluster shared by the integration tests (2 CPUs, like CI)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # Ray workers import test modules by name.
    paths = [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    temp_dir = tempfile.mkdtemp(prefix="ray-pm-", dir="/tmp")  # short: socket paths are limited
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={
            "env_vars": {
                "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            }
        },
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
