"""The gradient cache gives the full-batch gradients of every parameter (temperature
included), with dropout on, in one process and across 2 gloo processes."""

from __future__ import annotations

import pytest
import torch

from polymodal.batch import Batch, ModelOutput
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.grad_cache import grad_cache_backward, sync_gradients
from polymodal.objectives.joint import joint_loss
from tests.conftest import TINY_TOWERS

N = 12
PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)


def _setup(dropout: float, kind: str = "infonce"):
    cfg = load_config(
        None,
        [
            *TINY_TOWERS,
            "model.text.layers=1",
            f"model.dropout={dropout}",
            f"objective.contrastive.kind={kind}",
            "objective.weights.classification=0.7",
            "objective.contrastive.positives=label",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, PREP, num_classes=3).double().train()
    g = torch.Generator().manual_seed(1)
    image = torch.rand(N, 1, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randint(1, 200, (N, 10), generator=g)
    batch = Batch(
        inputs={"image": image, "text": text},
        present={
            "image": torch.ones(N, dtype=torch.float64),
            "text": (torch.rand(N, generator=g) > 0.2).double(),
        },
        label=torch.tensor([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0, 1]),
    )
    batch.inputs["text"][:, 7:] = 0  # padding
    return cfg, model, batch


def _reference(cfg, model, batch, chunk: int, seed: int):
    """Full-batch loss, with each chunk encoded in order (the same dropout draws)."""
    torch.manual_seed(seed)
    outs = [model(batch.slice(slice(s, s + chunk))) for s in range(0, N, chunk)]
    merged = ModelOutput(
        embeddings={m: torch.cat([o.embeddings[m] for o in outs]) for m in model.modalities},
        present=batch.present,
        logit_scale=model.logit_scale(),
        logit_bias=model.logit_bias,
        reconstructions={
            m: torch.cat([o.reconstructions[m] for o in outs]) for m in model.decoders
        },
        class_logits=torch.cat([o.class_logits for o in outs]),
    )
    loss, _ = joint_loss(merged, batch, cfg)  # every term over the whole batch at once
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _cached(cfg, model, batch, chunk: int, seed: int):
    torch.manual_seed(seed)
    loss, _ = grad_cache_backward(model, batch, cfg, chunk)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_grad_cache_equals_full_batch_with_dropout(kind):
    cfg, model, batch = _setup(dropout=0.3, kind=kind)
    ref_loss, ref = _reference(cfg, model, batch, chunk=4, seed=5)
    model.zero_grad()
    loss, got = _cached(cfg, model, batch, chunk=4, seed=5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    assert "log_logit_scale" in got and got["log_logit_scale"].abs() > 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-8, atol=1e-11, msg=name)
    # Dropout really is on: other draws give other gradients.
    model.zero_grad()
    _, other = _cached(cfg, model, batch, chunk=4, seed=6)
    assert not torch.allclose(
        other["encoders.text.embed.weight"], ref["encoders.text.embed.weight"]
    )


def test_grad_cache_without_dropout_equals_one_full_forward():
    cfg, model, batch = _setup(dropout=0.0)
    ref_loss, ref = _reference(cfg, model, batch, chunk=N, seed=0)  # one forward of all rows
    model.zero_grad()
    loss, got = _cached(cfg, model, batch, chunk=5, seed=0)  # ragged chunks: 5, 5, 2
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-8, atol=1e-11, msg=name)


def _uniform(batch):
    """Equal counts on every rank, so per-rank means average to the global mean (as in DDP)."""
    batch.present["text"] = torch.ones(N, dtype=torch.float64)
    batch.label = batch.label.clamp(min=0)
    return batch


def _two_ranks(rank: int, world: int):
    cfg, model, batch = _setup(dropout=0.0)
    batch = _uniform(batch)
    half = N // world
    local = batch.slice(slice(rank * half, (rank + 1) * half))
    loss, _ = grad_cache_backward(model, local, cfg, chunk_size=2)
    sync_gradients(model)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.distributed
def test_grad_cache_across_two_ranks_equals_one_process():
    from tests.distributed.helpers import run_on_ranks

    got = run_on_ranks(2, _two_ranks)
    cfg, model, batch = _setup(dropout=0.0)
    _, ref = _reference(cfg, model, _uniform(batch), chunk=N, seed=0)
    assert got["log_logit_scale"].abs() > 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-8, atol=1e-11, msg=name)
