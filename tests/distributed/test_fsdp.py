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


def _build(cfg, fsdp: bool):
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model, recompute_activations
    from polymodal.train.optim import build_optimizer, build_scheduler
    from polymodal.train.step import DDPStep, FSDPStep, shard_model

    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)
    torch.manual_seed(0)
    model = build_model(cfg, prep, num_classes=3).train()
    recompute_activations(model, cfg)
    if fsdp:
        shard_model(model)
        raw, kind = model, FSDPStep
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
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
    sharded, fsdp = _build(cfg, fsdp=True)
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
    resumed, resumed_step = _build(cfg, fsdp=True)
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
