"""Ray Train's local mode (train.num_workers: 0, the loop in the driver, no Train actors): what
Train's controller and storage context do otherwise — name the run directory, upload, keep N."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pyarrow.fs as pafs
import ray.train

from polymodal import storage
from polymodal.checkpoint import META, checkpoint_dirs
from polymodal.config.schema import TrainConfig


def run_storage(ctx: Any, run_dir: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) of the run directory: Ray's storage context's, or in local
    mode (which has none) the driver's run_dir."""
    try:
        store = ctx.get_storage()
    except NotImplementedError:
        return storage.resolve(run_dir)
    return store.storage_filesystem, store.experiment_fs_path


def keep_checkpoint(
    tmp: str, name: str, upload, fs: pafs.FileSystem, run_dir: str, t: TrainConfig
) -> ray.train.Checkpoint:
    """Upload the checkpoint written to tmp (upload(checkpoint, name), the loop's own), delete
    tmp, and delete the run's checkpoints that train.keep_checkpoints no longer keeps."""
    checkpoint = upload(ray.train.Checkpoint.from_directory(tmp), name)
    shutil.rmtree(tmp, ignore_errors=True)
    paths = checkpoint_dirs(fs, run_dir)
    keep = kept(paths, t, lambda p: _metrics(fs, p))
    for path in paths:
        if path not in keep:
            fs.delete_dir(path)
    return checkpoint


def kept(paths: list[str], t: TrainConfig, metrics_of) -> set[str]:
    """Ray's CheckpointConfig policy over paths (newest first): the newest keep_checkpoints,
    or the best by keep_best_metric (those without it last); the newest always."""
    ranked = paths
    if t.keep_best_metric:
        sign = 1 if t.keep_best_mode == "max" else -1
        scores = {p: metrics_of(p).get(t.keep_best_metric) for p in paths}
        ranked = sorted(paths, key=lambda p: (scores[p] is None, -sign * (scores[p] or 0)))
    return {paths[0], *ranked[: t.keep_checkpoints]}


def _metrics(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    try:
        with fs.open_input_stream(f"{path}/{META}") as f:
            return json.loads(f.read()).get("metrics") or {}
    except (OSError, ValueError):  # unfinished or damaged: kept by its age alone
        return {}
