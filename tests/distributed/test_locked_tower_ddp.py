"""lock_then_unlock under DDP (2 real gloo processes, find_unused_parameters as the training
loop sets it): while locked, the pretrained tower's weights stay exactly as loaded, even with
weight decay; once unlocked they train and stay identical on both ranks."""

from __future__ import annotations

import torch

from tests.distributed.helpers import run_on_ranks


def _train(rank: int, world: int) -> dict:
    import numpy as np
    import torch.distributed as dist

    from polymodal.batch import Batch
    from polymodal.config import load_config
    from polymodal.modalities import Preprocessing
    from polymodal.modalities.text import encode_text
    from polymodal.models.build import build_model, unlock_towers
    from polymodal.objectives.joint import joint_loss
    from polymodal.train.optim import build_optimizer
    from polymodal.train.step import has_unused_encoders

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        ["model.text.encoder=minilm", "model.text.tuning=lock_then_unlock"]
        + ["model.text.unlock_epoch=1", "model.image.width=8", "data.text_max_len=8"]
        + ["optim.lr=0.01", "optim.weight_decay=0.5"],
    )
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=8, text_tokenizer="minilm")
    torch.manual_seed(0)
    raw = build_model(cfg, prep)
    model = torch.nn.parallel.DistributedDataParallel(
        raw, find_unused_parameters=has_unused_encoders(cfg)
    )
    opt = build_optimizer(raw, cfg.optim)
    words = ["cat", "dog", "red heart", "a fish", "moon", "sun", "tree", "car"]
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank

    def epoch(number: int) -> None:
        unlock_towers(raw, cfg, number)
        model.train()
        for _ in range(2):
            order = torch.randperm(len(words), generator=g).tolist()
            ids = np.stack([encode_text(words[i], 8, "minilm") for i in order])
            batch = Batch(
                inputs={
                    "image": torch.rand(8, 1, 8, 8, generator=g),
                    "text": torch.from_numpy(ids),
                },
                present={"image": torch.ones(8), "text": torch.ones(8)},
                label=torch.full((8,), -1),
            )
            opt.zero_grad()
            loss, _ = joint_loss(model(batch), batch, cfg)
            loss.backward()
            opt.step()

    def tower() -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in raw.encoders["text"].parameters()])

    loaded = tower()
    epoch(1)
    locked = tower()
    epoch(2)
    unlocked = tower()
    every = [torch.zeros_like(unlocked) for _ in range(world)]
    dist.all_gather(every, unlocked)
    return {
        "locked_unchanged": torch.tensor(torch.equal(loaded, locked)),
        "moved": (unlocked - loaded).abs().max()[None],
        "ranks_equal": torch.tensor(torch.equal(every[0], every[1])),
    }


def test_locked_tower_is_untouched_then_trains_in_step():
    out = run_on_ranks(2, _train)
    assert out["locked_unchanged"].all()
    assert out["moved"].min() > 0
    assert out["ranks_equal"].all()
