"""The checkpoint format: model.pt (weights), train_state.pt (optimizer, for resume) and
polymodal.json (config, preprocessing, labels, step, metrics, history). Loads are weights_only."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from polymodal import storage
from polymodal.config import config_from_dict
from polymodal.data.decode import Preprocessing
from polymodal.models.build import build_model
from polymodal.models.joint import JointModel

_CACHE = Path(tempfile.gettempdir()) / "polymodal-checkpoints"
FORMAT_VERSION = 1
META = "polymodal.json"
WEIGHTS = "model.pt"
TRAIN_STATE = "train_state.pt"


class CheckpointError(ValueError):
    pass


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS)
    if train_state is not None:
        torch.save(train_state, directory / TRAIN_STATE)
    (directory / META).write_text(json.dumps({"format": FORMAT_VERSION, **meta}, indent=2))
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    file = Path(directory) / META
    if not file.is_file():
        raise CheckpointError(f"{directory}: no {META}; not a polymodal checkpoint")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: invalid JSON: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format {meta.get('format')}, expected {FORMAT_VERSION}")
    return meta


def fetch_checkpoint(uri: str | Path, files: tuple[str, ...] = (META, WEIGHTS)) -> Path:
    """A local directory holding the checkpoint's files: the path itself, or a cached copy
    of an s3:// checkpoint (only `files`: serving and eval leave the optimizer state)."""
    if not storage.is_remote(uri):
        return Path(uri)
    uri = str(uri)
    key = f"{uri}@{storage.version(storage.join(uri, META))}"  # a rewritten checkpoint is new
    local = _CACHE / hashlib.sha1(key.encode()).hexdigest()[:16]
    missing = [f for f in files if not (local / f).is_file()]
    return storage.download(uri, missing, local) if missing else local


def _load(file: Path, device: str | torch.device) -> Any:
    if not file.is_file():
        raise CheckpointError(f"missing {file}")
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling refused or file damaged: never fall back to full pickle
        raise CheckpointError(f"{file}: cannot load safely: {exc}") from exc


def load_model(directory: str | Path, device: str | torch.device = "cpu"):
    """(JointModel in eval mode, meta) from a checkpoint directory."""
    meta = read_meta(directory)
    cfg = config_from_dict(meta["config"])
    prep = Preprocessing(**meta["preprocessing"])
    model: JointModel = build_model(cfg, prep, meta.get("num_classes", 0))
    model.load_state_dict(load_model_state(directory, device))
    return model.to(device).eval(), meta


def load_model_state(directory: str | Path, device: str | torch.device = "cpu") -> dict:
    return _load(Path(directory) / WEIGHTS, device)


def load_train_state(directory: str | Path, device: str | torch.device = "cpu") -> dict:
    return _load(Path(directory) / TRAIN_STATE, device)
