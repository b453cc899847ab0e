"""Shared fixtures: small real datasets written with the real ingest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"

# Quiet, local-only Ray for every test process and the workers it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits"
    ingest("builtin:digits", out, progress=False)
    return out
