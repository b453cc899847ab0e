"""Prometheus metrics of a training run, recorded live by every Train worker with
ray.util.metrics and scraped from each Ray node's metrics export port (Ray adds `ray_`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ray.util import metrics


@dataclass
class TrainMetrics:
    run: str
    rank: int
    loss: metrics.Gauge
    samples_per_second: metrics.Gauge
    data_wait_fraction: metrics.Gauge
    gpu_memory: metrics.Gauge
    samples: metrics.Counter
    epoch: metrics.Gauge
    current_epoch: int = 0

    def record_step(
        self, losses: dict[str, float], samples: int, seconds: float, wait_s: float
    ) -> None:
        """losses: {"total": ..., term: ...} averaged since the last call (rank 0 only, the
        same on every rank up to noise); samples, seconds, wait_s: this rank's, since the
        epoch started."""
        tags = {"run": self.run, "rank": str(self.rank)}
        if self.rank == 0:
            for term, value in losses.items():
                self.loss.set(value, tags={"run": self.run, "term": term})
            # Again each step: Ray drops a gauge's value some seconds after it was last set.
            self.epoch.set(self.current_epoch, tags={"run": self.run})
        self.samples_per_second.set(samples / max(seconds, 1e-9), tags=tags)
        self.data_wait_fraction.set(wait_s / max(seconds, 1e-9), tags=tags)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.gpu_memory.set(torch.cuda.max_memory_allocated(), tags=tags)

    def count(self, samples: int) -> None:
        self.samples.inc(samples, tags={"run": self.run, "rank": str(self.rank)})

    def set_epoch(self, epoch: int) -> None:
        self.current_epoch = epoch
        if self.rank == 0:
            self.epoch.set(epoch, tags={"run": self.run})


def live_metrics(run: str, rank: int) -> TrainMetrics:
    """Created inside the worker process that records them."""
    per_rank = ("run", "rank")
    return TrainMetrics(
        run=run,
        rank=rank,
        loss=metrics.Gauge(
            "polymodal_train_loss",
            description="Training loss over the last log window: term=total or a loss term.",
            tag_keys=("run", "term"),
        ),
        samples_per_second=metrics.Gauge(
            "polymodal_train_samples_per_second",
            description="Samples per second this rank trained on, this epoch so far.",
            tag_keys=per_rank,
        ),
        data_wait_fraction=metrics.Gauge(
            "polymodal_train_data_wait_fraction",
            description="Share of this epoch's time the rank waited for the next batch.",
            tag_keys=per_rank,
        ),
        gpu_memory=metrics.Gauge(
            "polymodal_train_gpu_memory_bytes",
            description="Peak GPU memory allocated by torch on this rank (GPU runs only).",
            tag_keys=per_rank,
        ),
        samples=metrics.Counter(
            "polymodal_train_samples",
            description="Training samples processed by this rank.",
            tag_keys=per_rank,
        ),
        epoch=metrics.Gauge(
            "polymodal_train_epoch",
            description="The epoch being trained.",
            tag_keys=("run",),
        ),
    )
