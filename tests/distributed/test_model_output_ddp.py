"""JointModel's ModelOutput under DDP (2 real gloo processes): with find_unused_parameters, an
output the loss leaves unused (a tower no active term reads) does not stall the reducer."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.helpers import run_on_ranks


def _train(rank: int, world: int, find_unused: bool) -> dict:
    import torch.distributed as dist

    from polymodal.batch import Batch
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model
    from polymodal.objectives.joint import joint_loss

    torch.set_num_threads(1)
    overrides = ["model.image.width=8", "model.text.width=16", "model.text.layers=1"]
    overrides += ["model.text.heads=2", "objective.weights.reconstruction=1"]
    if find_unused:  # only the image decoder's loss: the text tower's embeddings go unused
        overrides += [
            "objective.weights.contrastive=0",
            "objective.reconstruction.modalities=[image]",
        ]
    cfg = load_config(None, overrides)
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=8)
    torch.manual_seed(0)
    raw = build_model(cfg, prep)
    model = torch.nn.parallel.DistributedDataParallel(raw, find_unused_parameters=find_unused)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):  # a stalled reduction fails at the next step's forward
        batch = Batch(
            inputs={
                "image": torch.rand(8, 1, 8, 8, generator=g),
                "text": torch.randint(1, 256, (8, 8), generator=g),
            },
            present={"image": torch.ones(8), "text": torch.ones(8)},
            label=torch.full((8,), -1),
        )
        opt.zero_grad()
        loss, _ = joint_loss(model(batch), batch, cfg)
        loss.backward()
        opt.step()
    mine = torch.cat([p.detach().flatten() for p in raw.parameters()])
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return {"every": torch.stack(every)}


@pytest.mark.distributed
@pytest.mark.parametrize("find_unused", [False, True])
def test_model_output_trains_under_ddp(find_unused):
    out = run_on_ranks(2, _train, find_unused)
    assert torch.equal(out["every"][0], out["every"][1])  # gradients were averaged
