"""The per-worker training loop run by Ray Train's TorchTrainer.

Reads top to bottom: setup (model, optimizer, resume) → epochs of steps → validate on rank 0 →
report metrics with a checkpoint. The Ray-specific lines are the `ray.train.*` calls.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from polymodal.config import config_from_dict
from polymodal.data.decode import Preprocessing
from polymodal.evaluation.evaluate import evaluate
from polymodal.models.build import build_model, unlock_towers
from polymodal.objectives.grad_cache import (
    broadcast_parameters,
    grad_cache_backward,
    sync_gradients,
)
from polymodal.objectives.joint import joint_loss
from polymodal.train.bad_rows import bad_fraction, check_bad_fraction, epoch_metrics
from polymodal.train.checkpoint import (
    CheckpointError,
    load_model_state,
    load_train_state,
    read_meta,
    save_checkpoint,
    upload,
    verify,
)
from polymodal.train.metrics import live_metrics
from polymodal.train.optim import build_optimizer, build_scheduler


def _all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def has_unused_encoders(cfg) -> bool:
    """Whether some encoder gets no gradient in a step: it feeds no active term, or it is a
    locked pretrained tower (DDP must then look for unused parameters)."""
    w, mods = cfg.objective.weights, set(cfg.model.modalities)
    used = set(mods) if w.contrastive > 0 else set()
    if w.reconstruction > 0:
        used |= set(cfg.objective.reconstruction.modalities or mods)
    if w.classification > 0:
        used |= set(cfg.objective.classification.modalities or mods)
    # A locked pretrained tower gets no gradient until it is unlocked.
    locked_tower = "text" in mods and cfg.model.text.tuning == "lock_then_unlock"
    return used != mods or locked_tower


def restore(checkpoint: ray.train.Checkpoint | None, fs, run_dir: str) -> tuple | None:
    """(meta, model state, train state, checkpoint) of the newest intact checkpoint in the
    run directory, or None when there is none. Newer than Ray's latest (`checkpoint`) can
    exist: a worker died between writing it and the controller's next poll, so Ray never
    registered it. A damaged or unfinished one is skipped, and said so."""
    import pyarrow.fs as pafs

    found = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    names = sorted(
        (
            info.path.rstrip("/")
            for info in found
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
        ),
        reverse=True,  # Ray's names sort by time
    )
    candidates = [ray.train.Checkpoint(p, filesystem=fs) for p in names]
    if checkpoint is not None and checkpoint.path.rstrip("/") not in names:
        candidates.insert(0, checkpoint)
    for candidate in candidates:
        try:
            with candidate.as_directory() as ckpt_dir:
                verify(ckpt_dir)
                meta, model_state = read_meta(ckpt_dir), load_model_state(ckpt_dir)
                state = meta, model_state, load_train_state(ckpt_dir), candidate
        except CheckpointError as exc:
            print(
                f"checkpoint {candidate.path} is unusable ({exc}); trying an older one", flush=True
            )
            continue
        print(f"resuming from {candidate.path} (epoch {state[0]['epoch']})", flush=True)
        return state
    if candidates:
        print(f"no intact checkpoint under {run_dir}: starting from scratch", flush=True)
    return None


def _name(checkpoint: ray.train.Checkpoint) -> str:
    return checkpoint.path.rstrip("/").rsplit("/", 1)[-1]


def _open_sample_log(directory: str, epoch: int, rank: int):
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    return open(f"{directory}/epoch-{epoch}-rank-{rank}-pid-{os.getpid()}.txt", "a")


def _upload(checkpoint: ray.train.Checkpoint, fs, dest: str) -> ray.train.Checkpoint:
    """Ray's upload with retries while the store is unreachable, polymodal.json last."""
    upload(checkpoint.path, fs, dest)
    return ray.train.Checkpoint(dest, filesystem=fs)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    # ---- setup ----
    meta = loop_config["meta"]
    cfg = config_from_dict(meta["config"])
    prep = Preprocessing(**meta["preprocessing"])
    label_names = meta["label_names"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    if not cfg.train.use_gpu:
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # same init on every rank; DDP broadcasts it anyway

    model = build_model(cfg, prep, len(label_names or []))
    start_epoch, step, history = 1, 0, []
    # Resume: the same run name started again, or a worker group restarted after a failure.
    store = ctx.get_storage()  # the run directory: where Ray keeps this run's checkpoints
    fs, run_dir = store.storage_filesystem, store.experiment_fs_path
    latest = ray.train.get_checkpoint()
    resumed = restore(latest, fs, run_dir)
    unregistered = None  # a checkpoint found in the run directory that Ray does not know
    if resumed is not None:
        saved, model_state, train_state, found = resumed
        model.load_state_dict(model_state)
        start_epoch, step, history = saved["epoch"] + 1, saved["step"], saved["history"]
        if latest is None or _name(found) > _name(latest):  # Ray's names sort by time
            unregistered = found
    per_worker_batch = cfg.train.batch_size // max(world, 1)
    grad_cache = 0 < cfg.train.grad_cache.chunk_size < per_worker_batch
    if grad_cache:  # gradients are averaged once per step by sync_gradients, not by DDP
        model = ray.train.torch.prepare_model(model, parallel_strategy=None)
        broadcast_parameters(model)
    else:
        model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": has_unused_encoders(cfg)}
        )
    raw_model = model.module if hasattr(model, "module") else model
    steps_per_epoch = max(loop_config["train_rows"] // max(world, 1) // per_worker_batch, 1)
    optimizer = build_optimizer(raw_model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch * cfg.train.epochs)
    if resumed is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val") if rank == 0 else None
    val_cache: list | None = None
    bad_rows, bad_before = loop_config.get("bad_rows"), None
    live = live_metrics(cfg.train.name, rank)

    def check_bad_rows(min_rows: int = 0) -> dict[str, Any]:
        """The run's dropped-row counts; raises once they pass data.max_bad_fraction."""
        totals = ray.get(bad_rows.totals.remote())
        if bad_fraction(totals)[1] >= min_rows:
            check_bad_fraction(totals, cfg.data.max_bad_fraction, meta["dataset"])
        return totals

    def validate() -> dict[str, float]:
        nonlocal val_cache
        batches = val_cache
        if batches is None:
            batches = val_data.iter_torch_batches(batch_size=cfg.eval.batch_size)
            if loop_config["val_rows"] <= cfg.data.cache_val_rows:
                val_cache = batches = list(batches)  # decoded once, reused every epoch
        templates = meta["zero_shot_templates"]
        return evaluate(
            raw_model, batches, prep, cfg.eval, cfg.objective, label_names, templates, device
        )

    if rank == 0 and start_epoch == 1:  # the untrained baseline, for the loss curves
        history.append(
            {
                "step": 0,
                "epoch": 0,
                **{k: v for k, v in validate().items() if k.startswith("val/loss")},
            }
        )

    if unregistered is not None:
        # Reported again, so that Ray (and Tune) know its epoch and keep or delete it with
        # the others; it is in the run directory already.
        ray.train.report(
            saved["metrics"],
            checkpoint=unregistered if rank == 0 else None,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )

    # ---- epochs ----
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        unlock_towers(raw_model, cfg, epoch)
        model.train()
        live.set_epoch(epoch)
        sums: dict[str, float] = defaultdict(float)
        window: dict[str, float] = defaultdict(float)
        n_steps, samples, wait_s = 0, 0, 0.0
        epoch_start = time.perf_counter()
        batches = train_shard.iter_torch_batches(
            batch_size=per_worker_batch,
            drop_last=True,
            device=device,
            prefetch_batches=cfg.data.prefetch_batches,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer_rows or None,
        )
        sample_log = _open_sample_log(cfg.train.sample_log_dir, epoch, rank)
        fetch_start = time.perf_counter()
        for batch in batches:
            wait_s += time.perf_counter() - fetch_start
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                if grad_cache:  # backward happens inside, sub-batch by sub-batch
                    loss, logs = grad_cache_backward(
                        raw_model, batch, cfg.objective, cfg.train.grad_cache.chunk_size
                    )
                else:
                    loss, logs = joint_loss(model(batch), batch, cfg.objective)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch}, step {step}")
            if grad_cache:
                sync_gradients(raw_model)
            else:
                loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_steps += 1
            if sample_log is not None:  # flushed per step: a killed worker's line is there
                sample_log.write(" ".join(map(str, batch["sample"].tolist())) + "\n")
                sample_log.flush()
            if bad_rows is not None and step % cfg.train.log_every_steps == 0:
                check_bad_rows(min_rows=cfg.data.decode_batch_size)  # fail early, not at the end
            samples += batch["label"].shape[0]
            values = {"loss": loss_value, **{f"loss/{k}": float(v) for k, v in logs.items()}}
            for k, v in values.items():
                sums[k] += v
                window[k] += v
            live.count(batch["label"].shape[0])
            if step % cfg.train.log_every_steps == 0:
                n, elapsed = cfg.train.log_every_steps, time.perf_counter() - epoch_start
                live.record_step(
                    {
                        k.removeprefix("loss/") if k != "loss" else "total": v / n
                        for k, v in window.items()
                    },
                    samples,
                    elapsed,
                    wait_s,
                )
                if rank == 0:
                    history.append(
                        {
                            "step": step,
                            "epoch": epoch,
                            **{f"train/{k}": v / n for k, v in window.items()},
                        }
                    )
                    print(
                        f"[epoch {epoch}/{cfg.train.epochs}] step {n_steps}/{steps_per_epoch} "
                        f"loss {window['loss'] / n:.4f}  {samples * world / elapsed:,.0f} "
                        "samples/s",
                        flush=True,
                    )
                window.clear()
            fetch_start = time.perf_counter()
        epoch_s = time.perf_counter() - epoch_start
        if sample_log is not None:
            sample_log.close()

        # Every rank reached here with the same step count: equal shards, drop_last.
        train_metrics = {f"train/{k}": v / max(n_steps, 1) for k, v in sums.items()}
        train_metrics["train/data_wait_fraction"] = wait_s / max(epoch_s, 1e-9)
        train_metrics = _all_mean(train_metrics, device)
        train_metrics["train/samples_per_s"] = samples * world / max(epoch_s, 1e-9)
        if bad_rows is not None:
            totals = check_bad_rows()
            train_metrics.update(epoch_metrics(totals, bad_before))
            bad_before = totals
        metrics = {
            "epoch": epoch,
            "step": step,
            **train_metrics,
            "train/lr": scheduler.get_last_lr()[0],
            "train/logit_scale": float(raw_model.logit_scale().detach()),
            # learned loss weights exp(-s_i) (objective.weighting: uncertainty)
            **{
                f"train/weight/{t}": math.exp(-float(s)) for t, s in raw_model.loss_log_vars.items()
            },
        }

        # ---- validate and checkpoint on rank 0; every rank reports ----
        if rank == 0:
            metrics.update(validate())
            if bad_rows is not None:
                check_bad_rows()  # the val split's rows count too
            history.append(
                {
                    "step": step,
                    "epoch": epoch,
                    **{k: v for k, v in metrics.items() if k.startswith("val/loss")},
                }
            )
            shown = ("train/loss", "val/loss", "val/accuracy", "val/zero_shot_accuracy")
            summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics)
            print(
                f"[epoch {epoch}/{cfg.train.epochs}] done in {epoch_s:.0f}s  {summary}  "
                f"{metrics['train/samples_per_s']:,.0f} samples/s",
                flush=True,
            )
            checkpoint_meta = {
                **meta,
                "epoch": epoch,
                "step": step,
                "metrics": metrics,
                "history": history,
            }
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(
                    tmp,
                    raw_model,
                    checkpoint_meta,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_upload_fn=lambda c, name: _upload(c, fs, f"{run_dir}/{name}"),
                )
        else:
            ray.train.report(metrics)
    return {"epochs_run": cfg.train.epochs - start_epoch + 1, "start_epoch": start_epoch}
