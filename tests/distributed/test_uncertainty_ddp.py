"""Learned loss weights stay identical on every rank under DDP (2 real gloo processes)."""

from __future__ import annotations

import torch

from tests.distributed.helpers import run_on_ranks


def _train(rank: int, world: int) -> dict:
    import torch.distributed as dist

    from polymodal.batch import Batch
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model
    from polymodal.objectives.joint import joint_loss

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            "objective.weighting=uncertainty",
            "objective.weights.classification=1",
            "objective.contrastive.gather=local",
            "model.image.width=8",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
        ],
    )
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=8)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(cfg, prep, num_classes=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        batch = Batch(
            inputs={
                "image": torch.rand(8, 1, 8, 8, generator=g),
                "text": torch.randint(1, 256, (8, 8), generator=g),
            },
            present={"image": torch.ones(8), "text": torch.ones(8)},
            label=torch.randint(0, 3, (8,), generator=g),
        )
        opt.zero_grad()
        loss, _ = joint_loss(model(batch), batch, cfg)
        loss.backward()
        opt.step()
    mine = torch.stack([p.detach() for p in model.module.loss_log_vars.values()])
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return {"values": torch.stack(every)}


def test_learned_weights_identical_across_ranks():
    values = run_on_ranks(2, _train)["values"]
    assert torch.equal(values[0], values[1])
    assert values[0].abs().min() > 1e-4  # they moved from 0
