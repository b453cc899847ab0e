"""Whether a run directory's checkpoints belong to the run a config describes: what makes a run
itself (model, data, preprocessing, dataset) compared before Ray starts, per train.resume."""

from __future__ import annotations

import os
import time
from typing import Any

from polymodal import storage
from polymodal.checkpoint import META, RunMeta, fetch_checkpoint, newest_checkpoint, read_meta
from polymodal.config import Config, ConfigError
from polymodal.objectives import TERMS

# Safe to change when resuming: how data is read and augmented, not what it is (and, in the
# model, whether a tower's activations are recomputed).
SAFE_DATA = (
    "data.decode_batch_size",
    "data.prefetch_batches",
    "data.cache_val_rows",
    "data.shuffle_buffer_rows",
    "data.max_bad_fraction",
    "data.stall_timeout_s",
    "data.augment.",
)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity(meta: RunMeta) -> dict[str, Any]:
    """The keys of a checkpoint's meta (or a new run's) that a resume must find unchanged:
    the model, the data (less SAFE_DATA), what each objective term names (Term.identity:
    the layers it adds), the preprocessing (train-split statistics included), the dataset
    and its label names. Keys a config lacks read as their defaults."""
    cfg = meta.run_config(checked=False)
    keys = flat({"model": cfg.model.model_dump(), "data": cfg.data.model_dump()})
    keys = {
        k: v
        for k, v in keys.items()
        if not k.startswith(SAFE_DATA) and not k.endswith(".activation_checkpointing")
    }
    keys["objective.weighting"] = cfg.objective.weighting
    for term in TERMS.values():
        keys |= term.identity(cfg)
    keys |= flat(meta.preprocessing, "preprocessing.")
    keys["dataset"] = meta.dataset
    keys["label_names"] = meta.label_names
    return keys


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key → (checkpoint's value, new value) where the two identities differ."""
    return {k: (old.get(k), new.get(k)) for k in sorted({*old, *new}) if old.get(k) != new.get(k)}


def check_resume(cfg: Config, run_dir: str, new_meta: RunMeta) -> None:
    """Before Ray starts. auto: resume only a checkpoint of the same run, else refuse
    naming what differs; force: resume anyway (the weights must still fit); never: move the
    old run aside (local runs) and start afresh."""
    if not storage.exists(run_dir):
        return
    found = newest_checkpoint(run_dir)
    if found is None:
        return
    mode = cfg.train.resume
    if mode == "never":
        if storage.is_remote(run_dir):
            raise ConfigError(
                f"train.resume: never: {run_dir} already holds checkpoints and is not moved "
                "aside on object storage; choose a new train.name"
            )
        aside = f"{run_dir}-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(run_dir, aside)
        print(f"train.resume: never: the previous run moved to {aside}", flush=True)
        return
    old = read_meta(fetch_checkpoint(found, (META,)))
    check_world(cfg, found, old)
    check_strategy(cfg, found, old)
    changed = differences(identity(old), identity(new_meta))
    if not changed:
        return
    lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    if mode == "force":
        print(f"train.resume: force: resuming {found} although\n{lines}", flush=True)
        return
    raise ConfigError(
        f"run '{cfg.train.name}' exists ({found}) and was trained with a different model or "
        f"data:\n{lines}\nChoose a new train.name, or set train.resume=never (start afresh "
        "under this name) or train.resume=force (resume anyway)."
    )


def check_world(cfg: Config, found: str, old: RunMeta) -> None:
    """A mid-epoch checkpoint resumes on any worker count: with another, the rows its ranks
    had still to read are dealt anew over the new ones (data/order.redeal), each read once."""
    position = old.position
    workers = max(cfg.train.num_workers, 1)
    if position and position.world != workers:
        print(
            f"{found} stopped mid-epoch (epoch {position.epoch}, step {position.steps} of "
            f"it) on {position.world} workers: the rest of the epoch is dealt over "
            f"{workers}, every sample still trained once",
            flush=True,
        )


def trained_strategy(meta: RunMeta) -> str:
    """The train.strategy a checkpoint was trained with (ddp before there was a choice)."""
    return meta.run_config(checked=False).train.strategy


def check_strategy(cfg: Config, found: str, old: RunMeta) -> None:
    """The optimizer state is laid out per train.strategy (by parameter number under ddp, by
    name under fsdp): another strategy resumes the weights only, with force."""
    before = trained_strategy(old)
    if before == cfg.train.strategy:
        return
    if cfg.train.resume == "force":
        print(
            f"train.resume: force: {found} was trained with train.strategy={before}; its "
            f"weights resume under {cfg.train.strategy}, the optimizer state starts afresh",
            flush=True,
        )
        return
    raise ConfigError(
        f"run '{cfg.train.name}': {found} was trained with train.strategy={before}, whose "
        f"optimizer state {cfg.train.strategy} cannot read. Resume with "
        f"train.strategy={before}, or set train.resume=force to keep the weights and start "
        "the optimizer afresh."
    )
