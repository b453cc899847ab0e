"""train.strategy: fsdp on 2 and 4 real gloo processes: one step (gathered InfoNCE,
reconstruction, classification, clipping, AdamW) moves the weights as DDP's does, with
activation checkpointing and with explicit negatives too, and its full state saved and
restored continues the same run."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_TOWERS
from tests.distributed.helpers import run_on_ranks

N = 8  # rows per rank


def _cfg(*extra: str):
    from polymodal.config import load_config

    return load_config(
        None,
        [
            *TINY_TOWERS,
            "model.text.layers=2",
            "objective.weights.classification=0.7",
            "objective.contrastive.gather=local",
            "optim.grad_clip=0.5",  # the clip is active: it sees every shard's gradients
            "optim.warmup_steps=0",
            *extra,
        ],
    )


def _batch(rank: int, step: int, negatives: bool = False):
    from polymodal.batch import Batch

    g = torch.Generator().manual_seed(100 * rank + step)  # different rows on each rank
    extra = {}
    if negatives:  # 2 mined image negatives per row, some absent
        extra["negatives"] = {"text->image": torch.rand(N, 2, 1, 8, 8, generator=g)}
        extra["negatives_present"] = {"text->image": (torch.rand(N, 2, generator=g) > 0.3).float()}
    return Batch(
        **extra,
        inputs={
            "image": torch.rand(N, 1, 8, 8, generator=g),
            "text": torch.randint(1, 200, (N, 10), generator=g),
        },
        present={"image": torch.ones(N), "text": torch.ones(N)},
        label=torch.randint(0, 3, (N,), generator=g),
    )


def _build(cfg, fsdp: bool, rank: int = 0, image_size: int = 8):
    """The model as the training loop builds it: under FSDP on the meta device, sharded,
    then filled from the whole model only rank 0 builds."""
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model, recompute_activations
    from polymodal.train.optim import build_optimizer, build_scheduler
    from polymodal.train.sharding import build_on_meta, spread_from_rank0
    from polymodal.train.step import DDPStep, FSDPGradCacheStep, FSDPStep, has_unused_encoders

    prep = Preprocessing(
        ["image", "text"], image_size=image_size, image_channels=1, text_max_len=10
    )
    torch.manual_seed(0)

    def build():
        return build_model(cfg, prep, num_classes=3).train()

    if fsdp:
        whole = build() if rank == 0 else None
        model = build_on_meta(build)
        assert all(p.is_meta for p in model.parameters())  # no rank builds it whole twice
        recompute_activations(model, cfg)
        kind = FSDPGradCacheStep if cfg.train.grad_cache.chunk_size else FSDPStep
        kind.prepare(model, cfg)
        spread_from_rank0(model, whole, torch.device("cpu"))
        raw = model
    else:
        model = build()
        recompute_activations(model, cfg)
        unused = has_unused_encoders(cfg)
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)
        raw, kind = model.module, DDPStep
    optimizer = build_optimizer(raw, cfg.optim)
    step = kind(
        model, optimizer, build_scheduler(optimizer, cfg.optim, 10), cfg, torch.device("cpu")
    )
    return raw, step


def _compare(rank: int, world: int, extra: tuple[str, ...], negatives: bool) -> dict:
    from polymodal.train.sharding import (
        full_model_state,
        full_optimizer_state,
        load_model_state,
        load_optimizer_state,
    )

    torch.set_num_threads(1)
    cfg = _cfg(*extra)
    plain, ddp = _build(cfg, fsdp=False)
    sharded, fsdp = _build(cfg, fsdp=True, rank=rank)
    torch.manual_seed(rank)  # the same dropout masks for both
    ddp_loss = ddp(_batch(rank, 0, negatives))[0]
    torch.manual_seed(rank)
    fsdp_loss = fsdp(_batch(rank, 0, negatives))[0]
    ddp_weights = {k: v.clone() for k, v in plain.state_dict().items()}
    saved_model = full_model_state(sharded)  # what a checkpoint holds
    saved_optim = full_optimizer_state(sharded, fsdp.optimizer)
    if rank == 0:
        plain.load_state_dict(saved_model)  # a plain model (serving's) loads it, strictly

    # Every rank reads the checkpoint's full state into a fresh sharded model: it continues.
    every = [None] * world
    torch.distributed.all_gather_object(every, (saved_model, saved_optim))
    resumed, resumed_step = _build(cfg, fsdp=True, rank=rank)
    load_model_state(resumed, every[0][0])
    load_optimizer_state(resumed, resumed_step.optimizer, every[0][1])
    resumed_step.scheduler.load_state_dict(fsdp.scheduler.state_dict())
    for step in (fsdp, resumed_step):
        torch.manual_seed(rank)
        step(_batch(rank, 1, negatives))
    return {
        "losses": torch.tensor([ddp_loss, fsdp_loss]),
        "after_one": (ddp_weights, saved_model),
        "continued": full_model_state(sharded),
        "resumed": full_model_state(resumed),
    }


@pytest.mark.parametrize(
    "world, extra, negatives",
    [
        (2, (), False),
        (4, ("model.text.activation_checkpointing=true", "model.dropout=0.1"), False),
        (2, (), True),  # explicit negatives, encoded by the sharded towers
    ],
)
def test_fsdp_steps_as_ddp_and_resumes_from_its_full_state(world, extra, negatives):
    out = run_on_ranks(world, _compare, extra, negatives)
    ddp_loss, fsdp_loss = out["losses"].tolist()
    assert fsdp_loss == pytest.approx(ddp_loss, rel=1e-6)
    plain, sharded = out["after_one"]
    assert list(sharded) == list(plain)  # the names a plain model (serving) loads
    for name, value in plain.items():
        torch.testing.assert_close(sharded[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name, value in out["continued"].items():
        torch.testing.assert_close(out["resumed"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def _lock_then_unlock(rank: int, world: int) -> dict:
    """A pretrained image tower (EfficientNet-Lite0, its weights read at build time, its
    normalising buffers in no state_dict) locked for a step, then unlocked: FSDP as DDP."""
    from polymodal.models.build import unlock_towers
    from polymodal.train.sharding import full_model_state

    torch.set_num_threads(1)
    cfg = _cfg(
        "model.image.encoder=efficientnet_lite0",
        "model.image.tuning=lock_then_unlock",
        "model.image.unlock_epoch=1",
    )
    plain, ddp = _build(cfg, fsdp=False, image_size=32)
    sharded, fsdp = _build(cfg, fsdp=True, rank=rank, image_size=32)
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    out = {"start": (start, full_model_state(sharded))}
    for epoch in (1, 2):  # locked in epoch 1, trained from epoch 2
        for model, step in ((plain, ddp), (sharded, fsdp)):
            unlock_towers(model, cfg, epoch)
            g = torch.Generator().manual_seed(10 * rank + epoch)
            batch = _batch(rank, epoch)
            batch.inputs["image"] = torch.rand(N, 1, 32, 32, generator=g)
            torch.manual_seed(rank)
            step(batch)
        plain_now = {k: v.clone() for k, v in plain.state_dict().items()}
        out[epoch] = (plain_now, full_model_state(sharded))
    return out


def test_fsdp_trains_a_lock_then_unlock_tower_as_ddp():
    out = run_on_ranks(2, _lock_then_unlock)
    tower = "encoders.image.net."
    for when in ("start", 1, 2):
        plain, sharded = out[when]
        assert list(sharded) == list(plain)
        for name, value in plain.items():
            where = f"{when} {name}"
            torch.testing.assert_close(sharded[name], value, rtol=1e-4, atol=1e-5, msg=where)
    start, locked, unlocked = out["start"][0], out[1][0], out[2][0]
    weights = [k for k in start if k.startswith(tower) and start[k].is_floating_point()]
    assert weights and all(torch.equal(locked[k], start[k]) for k in weights)  # locked
    assert any(not torch.equal(unlocked[k], locked[k]) for k in weights)  # then trained


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, whole (a shard's gathered)."""
    return {
        name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def _grad_cache(rank: int, world: int) -> dict:
    """Two steps of FSDP with the gradient cache (chunks of 3 of a rank's 8 rows) against
    DDP on the whole batch: their losses and (clipped) gradients."""
    from polymodal.train.step import FSDPGradCacheStep, step_strategy

    torch.set_num_threads(1)
    cached = _cfg("train.strategy=fsdp", "train.grad_cache.chunk_size=3")
    assert step_strategy(cached, N) is FSDPGradCacheStep
    plain, ddp = _build(_cfg(), fsdp=False)
    sharded, fsdp = _build(cached, fsdp=True, rank=rank)
    out = []
    for step_no in (0, 1):
        row = []
        for model, step in ((plain, ddp), (sharded, fsdp)):
            row.append((step(_batch(rank, step_no))[0], _grads(model)))
        out.append(row)
    return {"steps": out}


def test_fsdp_with_the_gradient_cache_steps_as_ddp_on_the_whole_batch():
    # Gradients, not weights: AdamW turns the zero gradient of attention's key bias (any
    # value leaves softmax unchanged) into a step of ±lr whose sign is float noise.
    for (ddp_loss, ddp), (cached_loss, cached) in run_on_ranks(2, _grad_cache)["steps"]:
        assert cached_loss == pytest.approx(ddp_loss, rel=1e-6)
        assert sorted(cached) == sorted(ddp)
        for name, grad in ddp.items():
            torch.testing.assert_close(cached[name], grad, rtol=1e-4, atol=1e-6, msg=name)
