"""One optimisation step of a Train worker, `step(batch) -> (loss value, logs)`, in one of the
strategies chosen once per run (DDP, FSDP or the gradient cache), at train.precision."""

from __future__ import annotations

import math
from typing import Any

import ray.train.torch
import torch
from torch import nn

from polymodal.batch import Batch
from polymodal.config import Config
from polymodal.models.joint import JointModel
from polymodal.objectives import active_terms
from polymodal.objectives.grad_cache import (
    average_gradients,
    broadcast_parameters,
    grad_cache_backward,
    sync_gradients,
)
from polymodal.objectives.joint import joint_loss
from polymodal.towers.checkpointing import repeated_blocks

Logs = dict[str, torch.Tensor]


class NonFiniteLoss(FloatingPointError):
    """A step's loss is NaN or infinite; raised before anything was applied to the model."""

    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


def has_unused_encoders(cfg: Config) -> bool:
    """Whether some encoder gets no gradient in a step: it feeds no active term, or it is a
    locked pretrained tower (DDP must then look for unused parameters)."""
    mods = set(cfg.model.modalities)
    used = {m for term in active_terms(cfg).values() for m in term.modalities(cfg)}
    # A locked pretrained tower gets no gradient until it is unlocked.
    locked_tower = any(cfg.model.tuning(m) == "lock_then_unlock" for m in mods)
    return used != mods or locked_tower


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.precision on `device`; auto is bf16 on CUDA and none on
    CPU, where it is slower than float32 on most hosts."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return AUTOCAST[precision]


def compile_towers(model: JointModel) -> str:
    """torch.compile each tower in place (its state_dict keys unchanged). Returns "" or why
    the compiler backend cannot build here, the towers then left eager."""
    try:
        torch.compile(lambda x: x.sin() + 1)(torch.zeros(2))  # the backend builds now or never
    except Exception as exc:  # no C++ compiler, an unsupported platform...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    for tower in model.encoders.values():
        tower.compile()
    return ""


class Step:
    """zero_grad → the strategy's forward (under autocast) and backward → clip → optimizer
    and scheduler; with fp16 the loss is scaled and steps with inf gradients skipped."""

    # Whether each rank holds only a shard of the weights: rank 0 then validates and saves a
    # gathered copy, and the optimizer state is saved and loaded by parameter name.
    sharded = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        cfg: Config,
        device: torch.device,
    ):
        self.model, self.optimizer, self.scheduler, self.cfg = model, optimizer, scheduler, cfg
        self.device_type, self.dtype = device.type, autocast_dtype(cfg.train.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step besides optimizer and scheduler: fp16's loss
        scale, which a resumed run would otherwise learn again from 65536 by overflowing."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, self.dtype, enabled=self.dtype is not None)

    @staticmethod
    def prepare(model: JointModel, cfg: Config) -> nn.Module:
        """The model on this worker's device, wrapped as the strategy needs."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> tuple[float, Logs]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, logs = self.forward(batch)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(loss_value)
        scaler = self.scaler
        self.backward(loss if scaler is None else scaler.scale(loss))
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # clipping sees the true gradients
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss_value, logs


class DDPStep(Step):
    """The whole batch forward through the DDP-wrapped model; DDP averages the gradients
    during backward."""

    @staticmethod
    def prepare(model: JointModel, cfg: Config) -> nn.Module:
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": has_unused_encoders(cfg)}
        )

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        with self.autocast():
            out = self.model(batch)
        return joint_loss(out.full_precision(), batch, self.cfg)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


class GradCacheStep(Step):
    """Sub-batches of train.grad_cache.chunk_size rows, backward inside the forward; the
    gradients are then averaged over ranks once, by sync_gradients rather than DDP."""

    @staticmethod
    def prepare(model: JointModel, cfg: Config) -> nn.Module:
        placed = ray.train.torch.prepare_model(model, parallel_strategy=None)
        broadcast_parameters(placed)  # what DDP would have done when wrapping it
        return placed

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Logs]:
        assert isinstance(self.model, JointModel)  # prepared without a wrapper
        chunk = self.cfg.train.grad_cache.chunk_size
        return grad_cache_backward(self.model, batch, self.cfg, chunk, self.autocast)

    def backward(self, loss: torch.Tensor) -> None:
        sync_gradients(self.model)


class FSDPStep(DDPStep):
    """FSDP2 (train.strategy: fsdp): each tower's repeated blocks, each tower and then the
    rest of the model are sharded over the ranks with fully_shard; weights are gathered for
    a block's forward and backward, gradients reduce-scattered. Scalars (the temperature, the
    bias, the loss log-variances; fully_shard takes none) and frozen weights stay whole on
    every rank, and the scalars' gradients are averaged here."""

    sharded = True

    @staticmethod
    def prepare(model: JointModel, cfg: Config) -> nn.Module:
        if any(p.is_meta for p in model.parameters()):  # sharding.build_on_meta's
            shard_model(model)  # then sharding.spread_from_rank0 fills it
            return model
        placed = ray.train.torch.prepare_model(model, parallel_strategy=None)  # its device
        assert isinstance(placed, JointModel)  # moved, not wrapped
        shard_model(placed)
        return placed

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        average_scalar_gradients(self.model)


class FSDPGradCacheStep(GradCacheStep):
    """The gradient cache over FSDP's shards: each chunk's backward reduce-scatters its
    gradients, which add up in the shards, so no rank holds a whole gradient; the scalars,
    left whole, are averaged here."""

    sharded = True

    @staticmethod
    def prepare(model: JointModel, cfg: Config) -> nn.Module:
        from torch.distributed.fsdp import register_fsdp_forward_method

        sharded = FSDPStep.prepare(model, cfg)
        # The cache embeds chunks through project_present, not forward: FSDP gathers the
        # root's weights (the projections) around it as around forward.
        register_fsdp_forward_method(sharded, "project_present")
        return sharded

    def backward(self, loss: torch.Tensor) -> None:
        average_scalar_gradients(self.model)


def average_scalar_gradients(model: nn.Module) -> None:
    """Average the gradients of the scalars fully_shard leaves whole (FSDP averages the rest
    when it reduce-scatters)."""
    average_gradients([p for p in model.parameters() if p.ndim == 0 and p.requires_grad])


def shard_model(model: JointModel) -> None:
    """fully_shard bottom-up (blocks, towers, the root), as FSDP2 wants: a module's weights
    then travel together, one block at a time. Scalars and frozen weights stay whole."""
    # Imported here: FSDP (with DTensor) takes ~0.6 s that a DDP run's workers need not pay.
    from torch.distributed.fsdp import fully_shard

    whole = {p for p in model.parameters() if p.ndim == 0 or not p.requires_grad}
    for tower in model.encoders.values():
        if not any(p.requires_grad for p in tower.parameters()):
            continue  # a frozen tower: nothing to reduce, and sharding would cost a gather
        for block in repeated_blocks(tower):
            fully_shard(block, ignored_params=whole)
        fully_shard(tower, ignored_params=whole)
    fully_shard(model, ignored_params=whole)


STRATEGIES = {"ddp": DDPStep, "fsdp": FSDPStep}


def step_strategy(cfg: Config, per_worker_batch: int) -> type[Step]:
    """The one place the strategy is chosen: train.strategy, or the gradient cache when its
    chunks are smaller than a worker's batch."""
    if 0 < cfg.train.grad_cache.chunk_size < per_worker_batch:
        return FSDPGradCacheStep if cfg.train.strategy == "fsdp" else GradCacheStep
    return STRATEGIES[cfg.train.strategy]
