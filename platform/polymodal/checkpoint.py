"""The checkpoint format, written by training and read by evaluation and serving: model.pt or
model.safetensors, train_state.pt, polymodal.json (RunMeta and the others' sha256, written last)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from polymodal import storage
from polymodal.models.build import build_model
from polymodal.models.joint import JointModel
from polymodal.run_meta import FORMAT_VERSION, FileSum
from polymodal.run_meta import META as META  # the format's names, for readers of checkpoints
from polymodal.run_meta import CheckpointError as CheckpointError
from polymodal.run_meta import Position as Position
from polymodal.run_meta import RunMeta as RunMeta
from polymodal.run_meta import read_meta as read_meta

_CACHE = Path(tempfile.gettempdir()) / "polymodal-checkpoints"
WEIGHTS = "model.pt"
WEIGHTS_SAFE = "model.safetensors"  # what `polymodal export --format safetensors` writes
TRAIN_STATE = "train_state.pt"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, write: Callable[[Path], object]) -> None:
    """Write under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    meta: RunMeta,
    train_state: dict[str, Any] | None = None,
    safetensors: bool = False,
) -> Path:
    """polymodal.json is `meta` with the files' sums, written last; safetensors: the weights
    as model.safetensors, which loads without any unpickling."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    objects = {WEIGHTS_SAFE if safetensors else WEIGHTS: model.state_dict()}
    if train_state is not None:
        objects[TRAIN_STATE] = train_state
    files = {}
    for name, obj in objects.items():
        _write(directory / name, functools.partial(_save, name, obj))
        files[name] = FileSum(
            sha256=sha256(directory / name), bytes=(directory / name).stat().st_size
        )
    done = meta.model_copy(update={"format": FORMAT_VERSION, "files": files})
    body = json.dumps(done.model_dump(mode="json"), indent=2)
    _write(directory / META, lambda tmp: tmp.write_text(body))
    return directory


def _save(name: str, obj: Any, path: Path) -> None:
    if name == WEIGHTS_SAFE:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


def weights_name(meta: RunMeta) -> str:
    """model.safetensors when the checkpoint was written with it, else model.pt."""
    return WEIGHTS_SAFE if WEIGHTS_SAFE in meta.files else WEIGHTS


def upload(
    local_dir: str | Path,
    fs,
    dest: str,
    attempts: int = 6,
    first_wait_s: float = 1.0,
    log: Callable[[str], None] = print,
) -> None:
    """Copy a checkpoint directory to `dest` on a pyarrow filesystem, polymodal.json last (a
    copy cut short has none, so it reads as unfinished); each file is retried with doubling
    waits (1 + 2 + 4 + 8 + 16 s by default) while the store is unreachable."""
    names = sorted(os.listdir(local_dir), key=lambda n: n == META)
    for name in names:
        data = (Path(local_dir) / name).read_bytes()
        for attempt in range(attempts):
            try:
                fs.create_dir(dest, recursive=True)
                with fs.open_output_stream(f"{dest}/{name}") as f:
                    f.write(data)
                break
            except OSError as exc:
                if attempt == attempts - 1:
                    raise
                wait = first_wait_s * 2**attempt
                log(f"upload of {name} to {dest} failed ({exc}); retrying in {wait:.0f}s")
                time.sleep(wait)


def checkpoint_name() -> str:
    """A new checkpoint's directory name, as Ray Train names them (names sort by time)."""
    stamp = time.time()
    name = time.strftime("checkpoint_%Y-%m-%d_%H-%M-%S", time.localtime(stamp))
    return name + f".{int(stamp % 1 * 1e6):06d}"


def newest_first(names: Iterable[str]) -> list[str]:
    """The checkpoint directories among names or paths of one directory (Ray's
    checkpoint_<time>), newest first."""
    found = (n for n in names if n.rsplit("/", 1)[-1].startswith("checkpoint_"))
    return sorted(found, reverse=True)


def checkpoint_dirs(fs, run_dir: str) -> list[str]:
    """The checkpoint directories of a run directory on pyarrow filesystem fs, newest first."""
    import pyarrow.fs as pafs

    found = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    return newest_first(i.path.rstrip("/") for i in found if i.type == pafs.FileType.Directory)


def newest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint (meta written) of a run directory, local or s3://."""
    for name in newest_first(storage.list_dirs(run_dir)):
        uri = storage.join(run_dir, name)
        if storage.is_file(storage.join(uri, META)):
            return uri
    return None


def checkpoint_or_newest(uri: str) -> str:
    """uri when it is a checkpoint; a run directory's newest checkpoint when it is a run's."""
    if storage.is_file(storage.join(uri, META)):
        return uri
    return newest_checkpoint(uri) or uri


def fetch_checkpoint(uri: str | Path, files: tuple[str, ...] | None = None) -> Path:
    """A local directory holding the checkpoint's files: the path itself, or a cached copy
    of an s3:// checkpoint (only `files`; by default its meta and weights: serving and eval
    leave the optimizer state)."""
    if not storage.is_remote(uri):
        return Path(uri)
    uri = str(uri)
    key = f"{uri}@{storage.version(storage.join(uri, META))}"  # a rewritten checkpoint is new
    local = _CACHE / hashlib.sha1(key.encode()).hexdigest()[:16]
    if not (local / META).is_file():
        storage.download(uri, [META], local)
    files = files or (META, weights_name(read_meta(local)))
    missing = [f for f in files if not (local / f).is_file()]
    return storage.download(uri, missing, local) if missing else local


def verify(
    directory: str | Path, names: tuple[str, ...] = (WEIGHTS, WEIGHTS_SAFE, TRAIN_STATE)
) -> None:
    """CheckpointError unless each of `names` the checkpoint lists has its recorded size and
    sha256 (a truncated, altered or missing file). Checkpoints from before the sums pass."""
    recorded = read_meta(directory).files
    for name in names:
        if name not in recorded:
            continue
        file = Path(directory) / name
        if not file.is_file():
            raise CheckpointError(f"missing {file}")
        expected = recorded[name]
        size = file.stat().st_size
        if size != expected.bytes:
            raise CheckpointError(f"{file}: {size} bytes, expected {expected.bytes} (truncated?)")
        if sha256(file) != expected.sha256:
            raise CheckpointError(f"{file}: sha256 differs from the one recorded (altered?)")


def _load(file: Path, device: str | torch.device) -> Any:
    if not file.is_file():
        raise CheckpointError(f"missing {file}")
    verify(file.parent, (file.name,))
    try:
        if file.name == WEIGHTS_SAFE:
            from safetensors.torch import load_file

            return load_file(file, device=str(device))
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling refused or file damaged: never fall back to full pickle
        raise CheckpointError(f"{file}: cannot load safely: {exc}") from exc


def load_model(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[JointModel, RunMeta]:
    """(JointModel in eval mode, meta) from a checkpoint directory."""
    meta = read_meta(directory)
    model = build_model(meta.run_config(), meta.prep, meta.num_classes)
    model.load_state_dict(load_model_state(directory, device))
    return model.to(device).eval(), meta


def load_model_state(directory: str | Path, device: str | torch.device = "cpu") -> dict:
    return _load(Path(directory) / weights_name(read_meta(directory)), device)


def load_train_state(directory: str | Path, device: str | torch.device = "cpu") -> dict:
    return _load(Path(directory) / TRAIN_STATE, device)


# Parts of a JointModel a checkpoint may lack when it starts another run: heads that run adds
# (and SigLIP's logit bias, which only the sigmoid loss has, either way).
NEW_HEADS = ("classifier.", "decoders.", "loss_log_vars.", "logit_bias")


def init_weights(model: torch.nn.Module, uri: str) -> None:
    """Load train.init_from's weights into a fresh model; CheckpointError names what does not
    fit. Only heads the new run adds (a classifier, decoders) may be missing."""
    state = load_model_state(fetch_checkpoint(uri))
    own = model.state_dict()
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if k not in shapes}, strict=False
    )
    missing = [k for k in missing if not k.startswith(NEW_HEADS)]
    unexpected = [k for k in unexpected if k != "logit_bias"]
    if shapes or missing or unexpected:
        raise CheckpointError(
            f"train.init_from={uri}: its weights do not fit this model (shape differs: "
            f"{shapes[:3]}, missing: {missing[:3]}, unexpected: {unexpected[:3]}); its "
            "model section must match (it is used unless this config sets model keys)"
        )
