"""One worker's statistics of an epoch: loss sums (epoch and log window), steps, samples and
time waited for data; they give each log step's values and the epoch's train/* metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


def all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


@dataclass
class LogWindow:
    """What a log step shows: the losses since the previous one (keys loss, loss/{term})
    over train.log_every_steps, and this rank's epoch so far."""

    means: dict[str, float]
    steps: int
    samples: int
    seconds: float
    wait_s: float
    sources: dict[str, float] = field(default_factory=dict)  # data.mix: batches' loss/<source>

    def by_term(self) -> dict[str, float]:
        """The means keyed as the live loss gauge's term tag: total, or the term's name."""
        return {
            k.removeprefix("loss/") if k != "loss" else "total": v for k, v in self.means.items()
        }

    def samples_per_s(self, world: int) -> float:
        return self.samples * world / self.seconds


@dataclass
class EpochStats:
    log_every: int  # train.log_every_steps: a window's sums are divided by it
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    window: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # data.mix: batches — each source's loss sums and steps, in the epoch and the window
    source_sums: dict[str, list[float]] = field(default_factory=dict)
    source_window: dict[str, list[float]] = field(default_factory=dict)
    # "a-b" -> rows holding both (tensors: no device sync per step)
    paired: dict[str, Any] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0
    samples: int = 0
    wait_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0  # the epoch's duration, once finish() was called

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """batches, adding the time spent waiting for each one to wait_s."""
        fetch_start = time.perf_counter()
        for batch in batches:
            self.wait_s += time.perf_counter() - fetch_start
            yield batch
            fetch_start = time.perf_counter()

    def add(self, loss: float, logs: dict[str, Any], rows: int, source: str = "") -> None:
        """A step's loss and logged terms (tensors or floats) over `rows` samples; source:
        the one its batch came from (data.mix: batches)."""
        self.steps += 1
        self.samples += rows
        values = {"loss": loss, **{f"loss/{k}": float(v) for k, v in logs.items()}}
        for k, v in values.items():
            self.sums[k] += v
            self.window[k] += v
        for sums in (self.source_sums, self.source_window) if source else ():
            total = sums.setdefault(source, [0.0, 0])
            total[0] += loss
            total[1] += 1

    def pairs(self, present: dict[str, torch.Tensor]) -> None:
        """Count the rows that hold each pair of modalities: a pair no training row holds is
        bound only through others (data.sources), which the report says of its recalls."""
        names = sorted(present)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                self.paired[f"{a}-{b}"] += ((present[a] > 0) & (present[b] > 0)).sum()

    def take_window(self) -> LogWindow:
        """The log window's values; the next window starts empty."""
        n = self.log_every
        window = LogWindow(
            means={k: v / n for k, v in self.window.items()},
            steps=self.steps,
            samples=self.samples,
            seconds=time.perf_counter() - self.start,
            wait_s=self.wait_s,
            sources={f"loss/{k}": total / n for k, (total, n) in self.source_window.items()},
        )
        self.window.clear()
        self.source_window.clear()
        return window

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.start

    def metrics(self, world: int, device: torch.device) -> dict[str, float]:
        """train/loss and train/loss/{term} (per step) and train/data_wait_fraction, each the
        mean over ranks; train/samples_per_s of all ranks. Every rank must call it."""
        metrics = {f"train/{k}": v / max(self.steps, 1) for k, v in self.sums.items()}
        metrics["train/data_wait_fraction"] = self.wait_s / max(self.seconds, 1e-9)
        # Every rank drew the same sources (one order for all), so has the same keys.
        metrics |= {f"train/loss/{k}": total / n for k, (total, n) in self.source_sums.items()}
        rows = max(self.samples, 1)
        metrics |= {f"train/paired/{k}": float(v) / rows for k, v in self.paired.items()}
        metrics = all_mean(metrics, device)
        metrics["train/samples_per_s"] = self.samples * world / max(self.seconds, 1e-9)
        return metrics


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank: what every rank then does together (stop, checkpoint)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_ranks(values: list[int], device: torch.device) -> list[list[int]]:
    """Every rank's `values` (as many on each), in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [values]
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [t.tolist() for t in out]
