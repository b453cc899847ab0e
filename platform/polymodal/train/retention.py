"""Which checkpoints a run directory keeps (train.keep_checkpoints, keep_best_metric): the
newest intact ones and the best by a validation metric; unfinished ones are left alone."""

from __future__ import annotations

import json
import math
from typing import Any

from polymodal.checkpoint import META


def kept(
    metrics: dict[str, dict[str, Any] | None], keep: int, metric: str = "", mode: str = "max"
) -> set[str]:
    """The names to keep of checkpoints name → their metrics (None: unfinished, no
    polymodal.json yet: an upload under way or a crash's leftover, never deleted here)."""
    intact = sorted(n for n, m in metrics.items() if m is not None)
    keep_names = set(intact[-keep:]) | {n for n, m in metrics.items() if m is None}
    scored = [
        n
        for n in intact
        if isinstance(metrics[n].get(metric), int | float) and math.isfinite(metrics[n][metric])
    ]
    if metric and scored:
        sign = 1 if mode == "max" else -1
        keep_names.add(max(scored, key=lambda n: (sign * metrics[n][metric], n)))
    return keep_names


class Retention:
    """Prunes a run directory (pyarrow filesystem fs) after each checkpoint, on rank 0; the
    metrics of the checkpoints seen are remembered, each polymodal.json read once."""

    def __init__(self, fs, run_dir: str, keep: int, metric: str = "", mode: str = "max"):
        self.fs, self.run_dir = fs, run_dir
        self.keep, self.metric, self.mode = keep, metric, mode
        self.seen: dict[str, dict[str, Any]] = {}

    def _metrics(self, name: str) -> dict[str, Any] | None:
        if name not in self.seen:
            try:
                with self.fs.open_input_stream(f"{self.run_dir}/{name}/{META}") as f:
                    self.seen[name] = json.loads(f.read()).get("metrics") or {}
            except (OSError, ValueError):
                return None
        return self.seen[name]

    def prune(self) -> list[str]:
        """Delete the intact checkpoints not kept; the names deleted."""
        import pyarrow.fs as pafs

        found = self.fs.get_file_info(pafs.FileSelector(self.run_dir, allow_not_found=True))
        names = [
            i.base_name
            for i in found
            if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
        ]
        metrics = {n: self._metrics(n) for n in names}
        gone = sorted(set(names) - kept(metrics, self.keep, self.metric, self.mode))
        for name in gone:
            self.fs.delete_dir(f"{self.run_dir}/{name}")
            self.seen.pop(name, None)
        return gone
