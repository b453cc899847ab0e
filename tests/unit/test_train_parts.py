"""The training loop's parts in one process: an epoch's statistics, the step strategy chosen
once (DDP or gradient cache, the same update), precision and compiled towers, a NaN loss
refused before any update, resume."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import ray.train
import torch

from polymodal.batch import Batch
from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import ConfigError, load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.resume import resume
from polymodal.train.stats import EpochStats
from polymodal.train.step import (
    DDPStep,
    GradCacheStep,
    NonFiniteLoss,
    compile_towers,
    step_strategy,
)
from tests.conftest import TINY_TOWERS

PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)
N = 8


def _cfg(*overrides: str):
    return load_config(
        None,
        [
            *TINY_TOWERS,
            "model.text.layers=1",
            "model.dropout=0",
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


def test_bf16_autocasts_the_towers_on_cpu_and_the_losses_stay_float32():
    model, step = _step(DDPStep, _cfg("train.precision=bf16"))
    seen = {m: set() for m in model.encoders}  # the dtypes of each tower's matmuls' outputs
    for m, tower in model.encoders.items():
        for layer in tower.modules():
            if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                layer.register_forward_hook(lambda _, __, out, m=m: seen[m].add(out.dtype))
    loss, logs = step(_batch())
    assert seen == {"image": {torch.bfloat16}, "text": {torch.bfloat16}}
    assert {v.dtype for v in logs.values()} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the weights stay fp32
    _, fp32 = _step(DDPStep, _cfg("train.precision=fp32"))
    _, auto = _step(DDPStep, _cfg())  # auto is fp32 on CPU: the same numbers
    reference = fp32(_batch())[0]
    assert auto(_batch())[0] == reference and loss == pytest.approx(reference, rel=0.05)
    _, cached = _step(GradCacheStep, _cfg("train.precision=bf16", "train.grad_cache.chunk_size=3"))
    assert cached(_batch())[0] == pytest.approx(loss, rel=0.02)


def test_fp16_is_refused_without_cuda_or_with_the_gradient_cache():
    with pytest.raises(ConfigError, match="fp16' needs CUDA"):
        _cfg("train.precision=fp16")
    with pytest.raises(ConfigError, match="use bf16 with train.grad_cache"):
        _cfg("train.precision=fp16", "train.use_gpu=true", "train.grad_cache.chunk_size=4")


def test_fp16s_loss_scale_is_kept_in_the_train_state_and_resumed(tmp_path):
    """The GradScaler's scale and growth count ride in train_state.pt (a weights_only
    load) and a resumed step continues from them, not from 65536. (fp16 trains on CUDA
    only; its scaler runs on CPU too, which is what is checked here.)"""
    cfg = _cfg()
    cfg.train.precision = "fp16"  # past the config check, which wants CUDA for training
    _, step = _step(DDPStep, cfg)
    assert step.scaler is not None
    for _ in range(3):
        step(_batch())
    saved = step.state_dict()
    torch.save(saved, tmp_path / "state.pt")
    _, resumed = _step(DDPStep, cfg)
    resumed(_batch())
    assert resumed.state_dict() != saved  # where a fresh scaler stands after one step
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.state_dict() == saved
    assert _step(DDPStep, _cfg())[1].state_dict() == {}  # nothing to keep without fp16


def test_compiled_towers_train_as_eager_ones_and_keep_their_checkpoint_keys():
    eager_model, eager = _step(DDPStep, _cfg())
    model, compiled = _step(DDPStep, _cfg("train.compile=true"))
    assert compile_towers(model) == ""
    assert list(model.state_dict()) == list(eager_model.state_dict())
    assert compiled(_batch())[0] == pytest.approx(eager(_batch())[0], rel=1e-5)
    # the clipped gradients each step applied (fused kernels round differently)
    for (name, a), b in zip(eager_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compile_says_why_and_leaves_towers_eager_when_the_backend_cannot_build(monkeypatch):
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "no-such-cxx"))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    torch._dynamo.reset()  # forget earlier compilations in this process
    model = build_model(_cfg(), PREP, num_classes=3)
    failed = compile_towers(model)
    torch._dynamo.reset()
    assert failed and "no-such-cxx" in failed
    assert not any(t._compiled_call_impl for t in model.encoders.values())


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
        meta = RunMeta(
            config=cfg.to_dict(), preprocessing=PREP.to_dict(), epoch=epoch, step=10 * epoch
        )
        save_checkpoint(tmp_path / f"checkpoint_000{epoch}", model, meta, state)
    weights = (tmp_path / "checkpoint_0003" / "model.pt").read_bytes()
    (tmp_path / "checkpoint_0003" / "model.pt").write_bytes(weights[:100])  # a torn upload
    fs = pafs.LocalFileSystem()

    def ray_knows(name):
        return ray.train.Checkpoint(str(tmp_path / name), filesystem=fs)

    found = resume(ray_knows("checkpoint_0001"), fs, str(tmp_path))
    assert found.meta.epoch == 2 and found.unregistered
    assert (found.start_epoch, found.meta.step) == (3, 20)
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
    from polymodal.train.prepare import check_cpus

    cfg = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=1"])
    with pytest.raises(ValueError) as err:
        check_cpus(cfg, 2.0)
    message = str(err.value)
    assert "2 workers × train.cpus_per_worker 1 = 2 CPUs, and the cluster has 2" in message
    assert "train.cpus_per_worker=0.5" in message
    check_cpus(cfg, 3.0)  # one left for data: fine
    check_cpus(load_config(None, ["train.cpus_per_worker=0.5"]), 2.0)


def test_min_workers_makes_trains_scaling_elastic():
    import ray.train

    from polymodal.config import ConfigError, load_config
    from polymodal.train.run import workers_range

    fixed = ray.train.ScalingConfig(num_workers=workers_range(load_config(None, [])))
    assert not fixed.elasticity_enabled and fixed.num_workers == 2
    cfg = load_config(None, ["train.num_workers=4", "train.min_workers=1"])
    elastic = ray.train.ScalingConfig(num_workers=workers_range(cfg))
    assert elastic.elasticity_enabled and (elastic.min_workers, elastic.max_workers) == (1, 4)
    with pytest.raises(ConfigError, match="train.min_workers' \\(3\\) must be between 1 and"):
        load_config(None, ["train.num_workers=2", "train.min_workers=3"])


def test_local_mode_keeps_checkpoints_as_train_does_and_refuses_fsdp():
    from polymodal.train.local_mode import kept

    paths = ["c5", "c4", "c3", "c2", "c1"]  # newest first
    newest = load_config(None, ["train.keep_checkpoints=2"]).train
    assert kept(paths, newest, lambda p: {}) == {"c5", "c4"}
    accuracy = {"c5": 0.5, "c4": None, "c3": 0.9, "c2": 0.7, "c1": 0.8}

    def metrics(path: str) -> dict:  # c4: a mid-epoch checkpoint, without the metric
        return {} if accuracy[path] is None else {"val/accuracy": accuracy[path]}

    by = ["train.keep_checkpoints=2", "train.keep_best_metric=val/accuracy"]
    assert kept(paths, load_config(None, by).train, metrics) == {"c5", "c3", "c1"}
    lowest = load_config(None, [*by, "train.keep_best_mode=min"]).train
    assert kept(paths, lowest, metrics) == {"c5", "c2"}  # the newest always
    with pytest.raises(ConfigError, match="'train.strategy: fsdp' shards over Train workers"):
        load_config(None, ["train.num_workers=0", "train.strategy=fsdp"])
