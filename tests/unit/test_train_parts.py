"""The training loop's parts in one process: an epoch's statistics, the step strategy chosen
once (DDP or gradient cache, the same update), a NaN loss refused before any update, resume."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import ray.train
import torch

from polymodal.batch import Batch
from polymodal.checkpoint import save_checkpoint
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.resume import resume
from polymodal.train.stats import EpochStats
from polymodal.train.step import DDPStep, GradCacheStep, NonFiniteLoss, step_strategy

PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)
N = 8


def _cfg(*overrides: str):
    return load_config(
        None,
        [
            "model.embed_dim=16",
            "model.image.width=4",
            "model.image.norm=group",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
            "model.dropout=0",
            "objective.weights.reconstruction=0.5",
            "objective.weights.classification=0.7",
            "optim.grad_clip=1.0",
            *overrides,
        ],
    )


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    decoded = {  # as Ray Data gives it
        "image": torch.rand(N, 1, 8, 8, generator=g),
        "text": torch.randint(1, 200, (N, 10), generator=g),
        "image_present": torch.ones(N),
        "text_present": torch.ones(N),
        "label": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
    }
    return Batch.from_dict(decoded)


def _step(kind, cfg):
    torch.manual_seed(0)
    model = build_model(cfg, PREP, num_classes=3).train()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    return model, kind(model, optimizer, scheduler, cfg, torch.device("cpu"))


def test_epoch_stats_windows_and_metrics():
    stats = EpochStats(log_every=2)
    for i, batch in enumerate(stats.timed([10, 20, 30])):
        stats.add(float(i), {"contrastive": torch.tensor(2.0 * i)}, rows=batch)
        if i == 1:
            window = stats.take_window()
            assert window.means == {"loss": 0.5, "loss/contrastive": 1.0}
            assert window.by_term() == {"total": 0.5, "contrastive": 1.0}
            assert (window.steps, window.samples) == (2, 30)
    assert stats.take_window().means == {"loss": 1.0, "loss/contrastive": 2.0}  # over log_every
    stats.finish()
    metrics = stats.metrics(world=2, device=torch.device("cpu"))
    assert metrics["train/loss"] == 1.0 and metrics["train/loss/contrastive"] == 2.0
    assert 0 <= metrics["train/data_wait_fraction"] <= 1
    assert metrics["train/samples_per_s"] == pytest.approx(60 * 2 / stats.seconds)


def test_the_gradient_cache_is_chosen_when_its_chunks_split_a_batch():
    assert step_strategy(_cfg(), 32) is DDPStep
    assert step_strategy(_cfg("train.grad_cache.chunk_size=8"), 32) is GradCacheStep
    assert step_strategy(_cfg("train.grad_cache.chunk_size=32"), 32) is DDPStep


def test_both_strategies_apply_the_same_gradients():
    cfg = _cfg("train.grad_cache.chunk_size=3")
    plain, ddp_step = _step(DDPStep, cfg)
    cached, cache_step = _step(GradCacheStep, cfg)
    loss, logs = ddp_step(_batch())
    cached_loss, cached_logs = cache_step(_batch())
    assert cached_loss == pytest.approx(loss, rel=1e-5)
    assert set(cached_logs) == set(logs)
    # the clipped gradients each step applied (left in .grad until the next step)
    for (name, a), b in zip(plain.named_parameters(), cached.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)
    assert ddp_step.scheduler.last_epoch == cache_step.scheduler.last_epoch == 1


def test_a_non_finite_loss_is_refused_before_any_update():
    model, step = _step(DDPStep, _cfg())
    before = [p.detach().clone() for p in model.parameters()]
    batch = _batch()
    batch.inputs["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="loss is nan"):
        step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert step.scheduler.last_epoch == 0


def test_resume_takes_the_newest_intact_checkpoint_and_says_if_ray_knows_it(tmp_path):
    cfg = _cfg()
    model = build_model(cfg, PREP, num_classes=3)
    state = {"optimizer": {}, "scheduler": {}}
    for epoch in (1, 2, 3):
        meta = {"config": cfg.to_dict(), "epoch": epoch, "step": 10 * epoch, "history": []}
        save_checkpoint(tmp_path / f"checkpoint_000{epoch}", model, meta, state)
    weights = (tmp_path / "checkpoint_0003" / "model.pt").read_bytes()
    (tmp_path / "checkpoint_0003" / "model.pt").write_bytes(weights[:100])  # a torn upload
    fs = pafs.LocalFileSystem()

    def ray_knows(name):
        return ray.train.Checkpoint(str(tmp_path / name), filesystem=fs)

    found = resume(ray_knows("checkpoint_0001"), fs, str(tmp_path))
    assert found.meta["epoch"] == 2 and found.unregistered
    assert (found.start_epoch, found.step) == (3, 20)
    assert found.checkpoint.path.endswith("checkpoint_0002")
    assert not resume(ray_knows("checkpoint_0002"), fs, str(tmp_path)).unregistered
    assert resume(None, fs, str(tmp_path / "nothing")) is None


def test_a_finished_runs_figures_are_best_effort(capsys):
    """A figure or report that cannot be written is a warning naming it, never a failed run."""
    from polymodal.train.run import best_effort

    def broken() -> None:
        raise FileNotFoundError(2, "No such file or directory")

    assert best_effort("runs/r/loss_curves.png", lambda: None) is True
    assert best_effort("runs/r/report/index.html", broken) is False
    out = capsys.readouterr().out
    assert "warning: could not write runs/r/report/index.html: FileNotFoundError" in out


def test_workers_that_hold_every_cpu_are_refused_with_the_numbers():
    """Two 1-CPU workers on two 1-CPU nodes sat at '0 rows': refused before starting."""
    from polymodal.config import load_config
    from polymodal.train.run import check_cpus

    cfg = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=1"])
    with pytest.raises(ValueError) as err:
        check_cpus(cfg, 2.0)
    message = str(err.value)
    assert "2 × 1 = 2 CPUs, and the cluster has 2" in message
    assert "train.cpus_per_worker=0.5" in message
    check_cpus(cfg, 3.0)  # one left for data: fine
    check_cpus(load_config(None, ["train.cpus_per_worker=0.5"]), 2.0)
