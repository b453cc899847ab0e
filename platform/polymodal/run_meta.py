"""RunMeta: what a checkpoint's polymodal.json holds, read and written through this one model;
torch-free, so that configs and `polymodal validate` can read a checkpoint's meta quickly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polymodal import storage
from polymodal.config import Config, config_from_dict, parse_config
from polymodal.modalities import Preprocessing

FORMAT_VERSION = 1
META = "polymodal.json"
RUN_METRICS = "metrics.json"  # in a run directory, once the run has finished


class CheckpointError(ValueError):
    pass


class Segment(BaseModel):
    """A part of an epoch trained on one worker count: the epoch's steps trained when it
    ended, its world size, and each rank's next position in each of its streams."""

    steps: int
    world: int
    streams: list[list[int]]


class Position(BaseModel):
    """Where a mid-epoch checkpoint stopped: its epoch, the steps of it trained, the world
    size, and each rank's next packed (piece ordinal, row) stream position (data/order.py):
    `next` in its one stream, or (data.mix: batches) `by_source` in each source's.
    `redealt`: the epoch's earlier parts on other worker counts, oldest first; after each,
    the epoch's rest was dealt anew over the next part's ranks (elastic resume)."""

    epoch: int
    steps: int
    world: int
    next: list[int]
    by_source: list[list[int]] = Field(default_factory=list)
    redealt: list[Segment] = Field(default_factory=list)

    def streams_of(self, rank: int) -> list[int]:
        """A rank's next position in each of its streams."""
        return self.by_source[rank] if self.by_source else [self.next[rank]]

    def segment(self) -> Segment:
        """This part of the epoch, as one that a resume on another worker count ends."""
        streams = [self.streams_of(r) for r in range(self.world)]
        return Segment(steps=self.steps, world=self.world, streams=streams)


class FileSum(BaseModel):
    sha256: str
    bytes: int


class RunMeta(BaseModel):
    """What polymodal.json holds: the run's config (secrets blanked), its preprocessing,
    labels and zero-shot prompts, the dataset, where training stood (epoch, step, position),
    its metrics and loss-curve history, the trackers' run ids, int8 calibration ranges per
    servable size ({"<dim>": [[min...], [max...]]}) and each other file's size and sha256.
    save_checkpoint writes it and read_meta reads it; fields a newer polymodal adds survive."""

    model_config = ConfigDict(extra="allow")

    format: int = FORMAT_VERSION
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    label_names: list[str] | None = None
    num_classes: int = 0
    zero_shot_templates: list[str] = Field(default_factory=list)
    dataset: str = ""
    epoch: int = 0
    step: int = 0
    position: Position | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    tracking: dict[str, str] = Field(default_factory=dict)
    calibration: dict[str, list[list[float]]] = Field(default_factory=dict)
    imported_from: dict[str, str] | None = None
    files: dict[str, FileSum] = Field(default_factory=dict)

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing(**self.preprocessing)

    def run_config(self, checked: bool = True) -> Config:
        """The config it was trained with; checked=False reads it without the cross-field
        checks (a resume compares it, whatever this machine has installed)."""
        return config_from_dict(self.config) if checked else parse_config(self.config)


def read_meta(directory: str | Path) -> RunMeta:
    """The meta of a checkpoint in a local directory."""
    file = Path(directory) / META
    if not file.is_file():
        raise not_a_checkpoint(str(directory))
    return parse_meta(file.read_bytes(), str(file))


def meta_of(uri: str) -> RunMeta:
    """The meta of a checkpoint, local or s3:// (its polymodal.json alone is read)."""
    if not storage.is_remote(uri):
        return read_meta(uri)
    file = storage.join(uri, META)
    if not storage.is_file(file):
        raise not_a_checkpoint(uri)
    return parse_meta(storage.read_bytes(file), file)


def checkpoints_of(run_dir: str) -> list[str]:
    """The checkpoints of a run directory (local or s3://), oldest first: Ray names them
    checkpoint_<time>, so their names sort by age."""
    names = [n for n in storage.list_dirs(run_dir) if n.startswith("checkpoint_")]
    return [
        storage.join(run_dir, n) for n in names if storage.is_file(storage.join(run_dir, n, META))
    ]


def not_a_checkpoint(uri: str) -> CheckpointError:
    """Why uri, which has no polymodal.json, is no checkpoint, and what to give instead: a run
    directory's checkpoints, or the directory holding a checkpoint's file."""
    plain = CheckpointError(f"{uri}: no {META}; not a polymodal checkpoint")
    try:  # a better message is worth a few more reads, not a different error
        if not storage.exists(uri):
            return CheckpointError(f"{uri}: no such file or directory")
        if storage.is_file(uri):
            parent = _parent(uri)
            hint = f" ({parent})" if storage.is_file(storage.join(parent, META)) else ""
            return CheckpointError(f"{uri}: is a file; give the checkpoint directory{hint}")
        found = checkpoints_of(uri)
    except OSError:  # an unreachable store: the plain message
        return plain
    if not found:
        return plain
    shown = ", ".join(found[-3:]) + (f" and {len(found) - 3} older" if len(found) > 3 else "")
    return CheckpointError(
        f"{uri} is a run directory; its checkpoints: {shown} (latest: {found[-1]})"
    )


def _parent(uri: str) -> str:
    if storage.is_remote(uri):
        return str(uri).rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.normpath(uri)) or os.path.abspath(os.curdir)


def check_run_dir(run_dir: str) -> None:
    """A run directory as `polymodal report` reads it (metrics.json, written when the run
    finished), or an error that says what run_dir is instead and what to give."""
    if storage.is_file(storage.join(run_dir, META)):
        parent = _parent(run_dir)
        if storage.is_file(storage.join(parent, RUN_METRICS)):
            raise ValueError(
                f"{run_dir} is a checkpoint; report takes its run directory {parent} (the parent)"
            )
        raise ValueError(
            f"{run_dir} is a checkpoint; report takes a finished run's directory (it holds "
            f"{RUN_METRICS}), and its parent {parent} holds none"
        )
    if storage.is_file(storage.join(run_dir, RUN_METRICS)):
        return
    if not storage.exists(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such file or directory")
    if storage.is_file(run_dir):
        raise NotADirectoryError(f"{run_dir}: is a file; give a run directory")
    found = checkpoints_of(run_dir)
    if found:
        raise ValueError(
            f"{run_dir}: no {RUN_METRICS}; the run has not finished (latest checkpoint: "
            f"{found[-1]}, which polymodal eval takes)"
        )
    raise ValueError(f"{run_dir}: no {RUN_METRICS}; not a run directory")


def parse_meta(data: bytes, file: str) -> RunMeta:
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: invalid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise CheckpointError(f"{file}: format {found}, expected {FORMAT_VERSION}")
    try:
        return RunMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{file}: '{where}': {first['msg']}") from None


def list_models(model_dir: str) -> dict[str, str]:
    """Model name -> checkpoint location, for a checkpoint (one model, named after its
    directory) or a directory of checkpoints, local or s3://."""
    if storage.is_file(storage.join(model_dir, META)):
        return {Path(str(model_dir).rstrip("/")).name: str(model_dir)}
    if not storage.exists(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a checkpoint or a directory of checkpoints")
    return {
        name: storage.join(model_dir, name)
        for name in storage.list_dirs(model_dir)
        if storage.is_file(storage.join(model_dir, name, META))
    }
