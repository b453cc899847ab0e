"""The gradient cache with a batch term that reads only some modalities' embeddings (a plug-in
term may): the others' cached embeddings get no gradient from it, and the step's gradients
are still the full batch's (it used to fail indexing the missing gradient)."""

from __future__ import annotations

import pytest
import torch

from polymodal import objectives
from polymodal.batch import Batch
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.base import Term
from polymodal.objectives.grad_cache import grad_cache_backward
from polymodal.objectives.joint import joint_loss
from polymodal.sections import Section
from tests.conftest import TINY_TOWERS


class UniformitySettings(Section):
    """Wang & Isola's uniformity of the image embeddings; nothing to set."""


def loss(outputs, batch: Batch, section: UniformitySettings, counts=None):
    x = outputs.embeddings["image"]  # the text embeddings are left out
    return torch.pdist(x).pow(2).mul(-2).exp().mean().log(), {}


IMAGE_UNIFORMITY = Term(
    name="image_uniformity", weight=0.0, section=UniformitySettings, scope="batch", loss=loss
)
PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)


@pytest.fixture
def registered():
    objectives.register(IMAGE_UNIFORMITY)
    yield
    del objectives.TERMS["image_uniformity"]


def test_a_batch_term_of_one_modality_gets_the_full_batch_gradients(registered):
    cfg = load_config(
        None,
        [*TINY_TOWERS, "model.text.layers=1", "objective.weights.image_uniformity=1"]
        + ["objective.weights.contrastive=0"],
    )
    torch.manual_seed(0)
    model = build_model(cfg, PREP).double()
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        inputs={
            "image": torch.rand(12, 1, 8, 8, generator=g).double(),
            "text": torch.randint(1, 50, (12, 10), generator=g),
        },
        present={"image": torch.ones(12).double(), "text": torch.ones(12).double()},
        label=torch.zeros(12, dtype=torch.int64),
    )
    loss_full, _ = joint_loss(model(batch), batch, cfg)
    loss_full.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_cached, _ = grad_cache_backward(model, batch, cfg, chunk_size=5)
    assert float(loss_cached) == pytest.approx(float(loss_full), rel=1e-9)
    for name, grad in full.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-8, atol=1e-11)
