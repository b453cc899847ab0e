"""A run name that already has checkpoints resumes only the same run: a different model, data
or preprocessing is refused before Ray starts, naming the keys; force and never behave as the
config says."""

from __future__ import annotations

import pytest
import torch

from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import ConfigError, load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.same_run import check_resume

TINY = ["model.embed_dim=8", "model.text.width=16", "model.text.layers=1", "model.text.heads=2"]


def _meta(cfg, prep, dataset="/data/fashion", **more):
    return RunMeta(
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        dataset=dataset,
        label_names=["a", "b"],
        **more,
    )


@pytest.fixture
def run_dir(tmp_path):
    """runs/r with one checkpoint of the TINY image + text model."""
    cfg = load_config(None, TINY)
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=16)
    torch.manual_seed(0)
    run = tmp_path / "runs" / "r"
    meta = _meta(cfg, prep, epoch=1, step=5)
    save_checkpoint(run / "checkpoint_2026-11-30_10-00-00.000000", build_model(cfg, prep), meta)
    return run, prep


def test_the_same_run_resumes_and_safe_changes_are_allowed(run_dir):
    run, prep = run_dir
    safe = ["train.epochs=30", "train.num_workers=4", "optim.lr=0.1", "data.prefetch_batches=8"]
    safe += ["data.stall_timeout_s=60"]
    cfg = load_config(None, [*TINY, *safe])
    check_resume(cfg, str(run), _meta(cfg, prep))  # no error: resumes as before


def test_a_different_model_or_dataset_is_refused_naming_the_keys(run_dir):
    run, prep = run_dir
    cfg = load_config(None, [*TINY, "model.embed_dim=16"])
    with pytest.raises(ConfigError) as err:
        check_resume(cfg, str(run), _meta(cfg, prep, dataset="/data/other"))
    message = str(err.value)
    assert "model.embed_dim: 8 -> 16" in message
    assert "dataset: '/data/fashion' -> '/data/other'" in message
    assert "train.name" in message and "train.resume=never" in message
    bigger = Preprocessing(["image", "text"], image_size=16, text_max_len=16)
    with pytest.raises(ConfigError, match="preprocessing.image_size: 8 -> 16"):
        check_resume(load_config(None, TINY), str(run), _meta(load_config(None, TINY), bigger))


def test_force_resumes_anyway_and_never_moves_the_old_run_aside(run_dir, capsys):
    run, prep = run_dir
    forced = load_config(None, [*TINY, "model.embed_dim=16", "train.resume=force"])
    check_resume(forced, str(run), _meta(forced, prep))
    assert "model.embed_dim: 8 -> 16" in capsys.readouterr().out
    fresh = load_config(None, [*TINY, "model.embed_dim=16", "train.resume=never"])
    check_resume(fresh, str(run), _meta(fresh, prep))
    assert not run.exists()
    (aside,) = run.parent.glob("r-replaced-*")
    assert (aside / "checkpoint_2026-11-30_10-00-00.000000" / "polymodal.json").is_file()


def test_a_mid_epoch_checkpoint_resumes_on_another_worker_count_and_says_so(tmp_path, capsys):
    cfg = load_config(None, TINY)
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=16)
    run = tmp_path / "runs" / "r"
    position = {"epoch": 2, "steps": 7, "world": 2, "next": [5, 9]}
    meta = _meta(cfg, prep, epoch=1, step=12, position=position)
    save_checkpoint(run / "checkpoint_2026-11-30_10-00-00.000000", build_model(cfg, prep), meta)
    check_resume(cfg, str(run), _meta(cfg, prep))  # 2 workers, as the checkpoint's
    assert "dealt" not in capsys.readouterr().out
    four = load_config(None, [*TINY, "train.num_workers=4"])
    check_resume(four, str(run), _meta(four, prep))  # no train.resume=force needed
    said = capsys.readouterr().out
    assert "epoch 2, step 7 of it) on 2 workers: the rest of the epoch is dealt over 4" in said


def test_another_strategy_resumes_only_with_force(tmp_path, capsys):
    cfg = load_config(None, TINY)
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=16)
    run = tmp_path / "runs" / "r"
    meta = _meta(cfg, prep, epoch=1, step=12)
    save_checkpoint(run / "checkpoint_2026-11-30_10-00-00.000000", build_model(cfg, prep), meta)
    fsdp = load_config(None, [*TINY, "train.strategy=fsdp"])
    with pytest.raises(ConfigError) as err:
        check_resume(fsdp, str(run), _meta(fsdp, prep))
    assert "train.strategy=ddp" in str(err.value) and "train.resume=force" in str(err.value)
    forced = load_config(None, [*TINY, "train.strategy=fsdp", "train.resume=force"])
    check_resume(forced, str(run), _meta(forced, prep))
    assert "the optimizer state starts afresh" in capsys.readouterr().out
