"""Activation checkpointing is exact: a tower whose blocks recompute in backward gives the
plain tower's loss and gradients (dropout included), with the same checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polymodal.batch import Batch
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.joint import joint_loss
from polymodal.towers.checkpointing import checkpoint_activations, repeated_blocks
from tests.conftest import TINY_TOWERS

PREP = Preprocessing(["image", "text"], image_size=16, image_channels=1, text_max_len=12)
# GroupNorm (in TINY_TOWERS): BatchNorm's running statistics would move twice.
CFG = [
    *TINY_TOWERS,
    "model.text.layers=3",
    "model.dropout=0.2",  # the recomputed blocks must replay the same masks
]


def _batch(n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(3)
    return Batch(
        inputs={
            "image": torch.rand(n, 1, 16, 16, generator=g),
            "text": torch.randint(1, 200, (n, 12), generator=g),
        },
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.full((n,), -1),
    )


def _loss_and_grads(model: nn.Module, cfg) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(7)  # the dropout masks
    loss, _ = joint_loss(model(_batch()), _batch(), cfg)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_checkpointed_towers_give_the_plain_towers_gradients():
    cfg = load_config(None, CFG)
    torch.manual_seed(0)
    plain = build_model(cfg, PREP).train()
    torch.manual_seed(0)
    recomputed = build_model(cfg, PREP).train()
    assert checkpoint_activations(recomputed.encoders["image"], "model.image") == 4  # conv stages
    assert checkpoint_activations(recomputed.encoders["text"], "model.text") == 3  # layers
    assert list(recomputed.state_dict()) == list(plain.state_dict())
    recomputed.load_state_dict(plain.state_dict())  # checkpoints load either way

    loss, grads = _loss_and_grads(plain, cfg)
    loss_ac, grads_ac = _loss_and_grads(recomputed, cfg)
    assert loss_ac == loss
    names = [n.replace("._checkpoint_wrapped_module", "") for n in grads_ac]
    assert names == list(grads)
    for (name, a), b in zip(grads.items(), grads_ac.values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)


def test_a_tower_without_blocks_is_refused_by_name():
    assert repeated_blocks(nn.Linear(4, 4)) == []
    with pytest.raises(ValueError, match="model.vector.activation_checkpointing: Linear"):
        checkpoint_activations(nn.Linear(4, 4), "model.vector")
