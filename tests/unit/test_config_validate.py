"""Every config problem at once: type errors together, cross-field rules together; `polymodal
validate` (exit 0/1, torch-free, fast); and docs/config.md generated from the field descriptions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from polymodal.config import ConfigError, load_config
from polymodal.config.reference import missing_descriptions, reference

REPO = Path(__file__).resolve().parents[2]
FASHION = REPO / "jobs" / "configs" / "fashion.yaml"


def test_type_errors_are_reported_together_each_with_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=three", "train.epoch=3", "model.image.encoder=resnet19"])
    problems = err.value.problems
    assert len(problems) == 3
    assert any(p.startswith("'train.epochs' must be int") for p in problems)
    assert any("'train.epoch'; did you mean 'train.epochs'?" in p for p in problems)
    assert any("did you mean 'resnet18'?" in p for p in problems)
    assert str(err.value).startswith("3 config errors:")


def test_cross_field_rules_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "train.batch_size=255",
                "train.precision=fp16",
                "objective.contrastive.matryoshka_dims=[500]",
                "objective.reconstruction.modalities=[audio]",
            ],
        )
    keys = [p.split("'")[1] for p in err.value.problems]
    assert sorted(keys) == [
        "objective.contrastive.matryoshka_dims",
        "objective.reconstruction.modalities",
        "train.batch_size",
        "train.precision: fp16",
    ]


def test_bounds_name_the_key_and_the_bound():
    with pytest.raises(ConfigError, match=r"'train.epochs' must be >= 1, got 0"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"'data.max_bad_fraction' must be <= 1.0, got 2"):
        load_config(None, ["data.max_bad_fraction=2"])


def _validate(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    cli = Path(sys.executable).with_name("polymodal")
    cmd = [str(cli)] if cli.is_file() else [sys.executable, "-m", "polymodal.cli"]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "validate", *args], capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - start


def test_polymodal_validate_exits_0_or_1_quickly_and_lists_every_problem():
    ok, seconds = _validate(str(FASHION), "train.epochs=2")
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "image, text" in ok.stdout
    assert seconds < 2.0, f"polymodal validate took {seconds:.2f}s (torch or Ray imported?)"
    bad, seconds = _validate(str(FASHION), "train.epochs=0", "optim.lr=-1", "model.txt.width=3")
    assert bad.returncode == 1
    assert "3 config errors" in bad.stderr and str(FASHION) in bad.stderr
    for key in ("'train.epochs' must be >= 1", "'optim.lr' must be > 0", "'model.txt'"):
        assert key in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert seconds < 2.0


def test_config_reference_is_current_and_every_key_is_described():
    assert missing_descriptions() == []
    page = (REPO / "docs" / "config.md").read_text()
    assert page == reference(), "docs/config.md is stale: run `make config-docs`"
    for key in ("`train.epochs`", "`model.image.encoder`", "`objective.weights.contrastive`"):
        assert key in page
