"""Resuming a run: the newest intact checkpoint in the run directory (Ray's latest, or a newer
one Ray never registered), read into a Resume; damaged or unfinished ones are skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray.train

from polymodal.checkpoint import (
    CheckpointError,
    Position,
    RunMeta,
    checkpoint_dirs,
    load_model_state,
    load_train_state,
    read_meta,
    verify,
)


@dataclass
class Resume:
    meta: RunMeta  # the checkpoint's polymodal.json
    model_state: dict[str, Any]
    train_state: dict[str, Any]  # optimizer and scheduler
    checkpoint: ray.train.Checkpoint
    # Newer than Ray's latest: a worker died between writing it and the controller's next
    # poll. The run reports it again, so that Ray (and Tune) keep or delete it with the rest.
    unregistered: bool

    @property
    def position(self) -> Position | None:
        """Where a mid-epoch checkpoint stopped; None at an epoch's end."""
        return self.meta.position

    @property
    def start_epoch(self) -> int:
        return self.position.epoch if self.position else self.meta.epoch + 1


def _name(checkpoint: ray.train.Checkpoint) -> str:
    return checkpoint.path.rstrip("/").rsplit("/", 1)[-1]


def _checkpoints_newest_first(
    latest: ray.train.Checkpoint | None, fs, run_dir: str
) -> list[ray.train.Checkpoint]:
    names = checkpoint_dirs(fs, run_dir)
    candidates = [ray.train.Checkpoint(p, filesystem=fs) for p in names]
    if latest is not None and latest.path.rstrip("/") not in names:
        candidates.insert(0, latest)
    return candidates


def resume(latest: ray.train.Checkpoint | None, fs, run_dir: str) -> Resume | None:
    """The newest intact checkpoint of the run directory (on pyarrow filesystem fs), or None
    when there is none. `latest` is Ray's (ray.train.get_checkpoint()); newer ones can exist."""
    candidates = _checkpoints_newest_first(latest, fs, run_dir)
    for candidate in candidates:
        try:
            with candidate.as_directory() as ckpt_dir:
                verify(ckpt_dir)
                meta, model_state = read_meta(ckpt_dir), load_model_state(ckpt_dir)
                train_state = load_train_state(ckpt_dir)
        except CheckpointError as exc:
            print(
                f"checkpoint {candidate.path} is unusable ({exc}); trying an older one", flush=True
            )
            continue
        where = f"epoch {meta.epoch}"
        if meta.position:
            where = f"epoch {meta.position.epoch}, step {meta.position.steps} of it"
        print(f"resuming from {candidate.path} ({where})", flush=True)
        unregistered = latest is None or _name(candidate) > _name(latest)
        return Resume(meta, model_state, train_state, candidate, unregistered)
    if candidates:
        print(f"no intact checkpoint under {run_dir}: starting from scratch", flush=True)
    return None


def report_again(resumed: Resume, rank: int) -> None:
    """Every rank: report an unregistered checkpoint again, so that Ray (and Tune) know its
    epoch and keep or delete it with the others; it is in the run directory already."""
    ray.train.report(
        resumed.meta.metrics,
        checkpoint=resumed.checkpoint if rank == 0 else None,
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
    )
