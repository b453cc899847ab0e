"""Rank 0's progress bar over an epoch's steps, drawn on the driver's terminal: Ray's tqdm_ray
prints the bar's state as a log line, and the driver draws it between the workers' lines."""

from __future__ import annotations

from typing import Any


class EpochBar:
    """A bar when `shown` (rank 0 of a run whose driver is on a terminal), else nothing."""

    def __init__(self, shown: bool, epoch: int, epochs: int, steps: int, done: int = 0):
        self.bar: Any = None
        if shown:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(desc=f"epoch {epoch}/{epochs}", total=steps, unit="step")
            if done:  # resumed mid-epoch
                self.bar.update(done)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
