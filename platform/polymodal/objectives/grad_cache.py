"""Gradient cache: one optimisation step on a batch far larger than fits in memory.

1. Encode sub-batches without grad and keep only their embeddings (and RNG states).
2. Compute the batch terms (contrastive) on all embeddings at once (gathered across ranks)
   and their gradient w.r.t. the embeddings, the temperature and the bias.
3. Re-encode each sub-batch with grad under its saved RNG state (same dropout) and back-
   propagate the cached embedding gradient plus the rows terms with whole-batch
   denominators. Gradients are then averaged over ranks once — no DDP hooks per sub-batch.
The result equals the full-batch gradients for models whose layers act per sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from polymodal.batch import Batch, ModelOutput, full
from polymodal.objectives import active_terms
from polymodal.objectives.gather import distributed
from polymodal.objectives.joint import batch_counts, term_losses

if TYPE_CHECKING:
    from polymodal.config import Config
    from polymodal.models.joint import JointModel


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_backward(
    model: JointModel,
    batch: Batch,
    cfg: Config,
    chunk_size: int,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Accumulate the full-batch gradients into `model`'s .grad; returns (loss, logs).

    `model` is the plain JointModel (not DDP-wrapped): call sync_gradients afterwards.
    `autocast` is entered around the model's forward passes; the losses sum in float32.
    """
    weights = {name: term.weight_of(cfg) for name, term in active_terms(cfg).items()}
    if cfg.objective.weighting != "static":
        raise ValueError("the gradient cache supports objective.weighting: static")
    if batch.negatives:  # step 1 caches the rows' embeddings only: negatives would be lost
        raise ValueError("the gradient cache does not take explicit negatives yet")
    n = batch.size
    device = batch.label.device
    chunks = [slice(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    subs = [batch.slice(sl) for sl in chunks]

    # 1. embeddings without grad; BatchNorm running stats are restored so they move once.
    states = []
    cached: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        for sub in subs:
            states.append(_rng_state(device))
            for m in model.modalities:
                with autocast():
                    raw = model.project_present(m, sub.inputs[m], sub.present[m])
                    emb = F.normalize(raw, dim=-1)  # as forward's, the same rows encoded
                cached[m].append(full(emb))
    for name, value in model.named_buffers():
        value.copy_(buffers[name])

    # 2. the batch terms once, on every embedding; their gradient is cached.
    dtype = next(model.parameters()).dtype
    total = torch.zeros((), device=device, dtype=dtype)
    emb_grads: dict[str, torch.Tensor] = {}
    leaves = {m: torch.cat(v).requires_grad_() for m, v in cached.items()}
    outputs = ModelOutput(
        embeddings=leaves,
        present=batch.present,
        logit_scale=model.logit_scale(),
        logit_bias=model.logit_bias,
    )
    batch_terms, logs = term_losses(outputs, batch, cfg, scope="batch")
    if batch_terms:
        weighted = torch.stack([weights[name] * loss for name, loss in batch_terms.items()]).sum()
        weighted.backward()  # temperature/bias grads land on the params
        # A modality no batch term reads has no gradient here: it adds nothing below.
        emb_grads = {m: leaf.grad for m, leaf in leaves.items() if leaf.grad is not None}
        total += weighted.detach()
        logs.update({name: loss.detach() for name, loss in batch_terms.items()})

    # 3. re-encode each sub-batch with grad and push the cached gradient through it.
    counts = batch_counts(batch, cfg)
    term_sums: dict[str, torch.Tensor] = {}
    for sl, sub, state in zip(chunks, subs, states):
        _set_rng_state(state, device)
        with autocast():
            out = model(sub)
        out = out.full_precision()
        surrogate = torch.zeros((), device=device, dtype=dtype)
        for m, emb in out.embeddings.items():
            if m in emb_grads:
                surrogate = surrogate + (emb * emb_grads[m][sl]).sum()
        terms, part_logs = term_losses(out, sub, cfg, scope="rows", counts=counts)
        for name, value in terms.items():
            surrogate = surrogate + weights[name] * value
            term_sums[name] = term_sums.get(name, 0.0) + value.detach()
        for name, value in part_logs.items():
            term_sums[name] = term_sums.get(name, 0.0) + value
        surrogate.backward()
    for name, value in term_sums.items():
        logs[name] = value
        if name in weights:
            total += weights[name] * value
    return total, logs


def sync_gradients(model: nn.Module) -> None:
    """Average .grad over ranks in one flat all-reduce (what DDP would have done)."""
    # A locked tower's weights get no gradient on any rank; zeros would let AdamW move them.
    locked = {id(p) for m in model.modules() if getattr(m, "locked", False) for p in m.parameters()}
    average_gradients([p for p in model.parameters() if p.requires_grad and id(p) not in locked])


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average these parameters' .grad over ranks in one flat all-reduce (a missing one
    counts as zeros)."""
    if not distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's weights (DDP does this when it wraps a model)."""
    if not distributed():
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)
