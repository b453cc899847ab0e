"""The per-worker training loop that Ray Train's TorchTrainer runs, as a recipe: setup (model,
resume, step strategy, data) → epochs of steps → validate and checkpoint on rank 0, report."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch

from polymodal.batch import Batch
from polymodal.checkpoint import Position, checkpoint_name, init_weights, save_checkpoint, upload
from polymodal.console import quiet
from polymodal.data.pipeline import configure_ray_data
from polymodal.models.build import build_model, recompute_activations, unlock_towers
from polymodal.models.joint import JointModel
from polymodal.train.bad_rows import BadRowCheck
from polymodal.train.epoch_data import EpochData, by_source
from polymodal.train.features import FrozenFeatures, cached_modalities
from polymodal.train.local_mode import keep_checkpoint, run_storage
from polymodal.train.metrics import live_metrics
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.prepare import LoopInputs
from polymodal.train.progress import EpochBar
from polymodal.train.references import References
from polymodal.train.resume import report_again, resume
from polymodal.train.same_run import trained_strategy
from polymodal.train.sample_log import SampleLog
from polymodal.train.sharding import (
    build_on_meta,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    spread_from_rank0,
)
from polymodal.train.stats import EpochStats, LogWindow, all_ranks, any_rank
from polymodal.train.step import NonFiniteLoss, compile_towers, step_strategy
from polymodal.train.suites import run_suites
from polymodal.train.tracking import Trackers
from polymodal.train.validation import ValBatches, val_losses, validate

SHOWN = ("train/loss", "val/loss", "val/accuracy", "val/answer_accuracy", "val/zero_shot_accuracy")


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    quiet(to_file=False)  # as the driver: Ray's lines stay in Ray's files unless --verbose
    recipe = Recipe(config["inputs"])
    recipe.setup()
    return recipe.train()


class Recipe:
    """One Train worker's run; the state its steps share."""

    def __init__(self, inputs: LoopInputs):
        self.inputs = inputs
        self.meta = inputs.meta  # what each checkpoint's polymodal.json starts from
        self.cfg = cfg = self.meta.run_config()
        self.prep = self.meta.prep
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
        self.local = cfg.train.num_workers == 0  # Train's local mode: this loop in the driver
        self.fs, self.run_dir = run_storage(ctx, inputs.run_dir)  # where the checkpoints go

    # ---- setup ----
    def setup(self) -> None:
        cfg, inputs = self.cfg, self.inputs
        if not (cfg.train.use_gpu or self.local):  # the driver keeps its own threads
            torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
        self.per_worker_batch = cfg.train.batch_size // max(self.world, 1)
        Step = step_strategy(cfg, self.per_worker_batch)
        # Under FSDP only rank 0 builds the whole model (its plain copy validates and saves,
        # gather()); every rank builds on the meta device and gets its shards from it.
        torch.manual_seed(cfg.train.seed)  # same init on every rank; DDP broadcasts it anyway
        build = lambda: build_model(cfg, self.prep, self.meta.num_classes)  # noqa: E731
        whole = build() if not Step.sharded or self.rank == 0 else None
        # The same run name started again, or a worker group restarted after a failure.
        self.resumed = resume(ray.train.get_checkpoint(), self.fs, self.run_dir)
        self.start_epoch, self.step = 1, 0
        self.history: list[dict[str, Any]] = []
        self.position: Position | None = None  # where a mid-epoch checkpoint left each rank
        if self.resumed is not None:
            if whole is not None:
                whole.load_state_dict(self.resumed.model_state)
            self.start_epoch, self.step = self.resumed.start_epoch, self.resumed.meta.step
            self.history = self.resumed.meta.history
            self.position = self.resumed.position
            self.meta = self.meta.model_copy(update={"calibration": self.resumed.meta.calibration})
            streams = len(inputs.train_pieces) if by_source(inputs, cfg) else 1
            if self.position and len(self.position.streams_of(0)) != streams:
                # train.resume: force with another data.mix or sources (the driver refuses
                # them otherwise): the interrupted epoch starts again whole. Another worker
                # count deals the epoch's rest anew (EpochData.batches).
                self.step -= self.position.steps
                self.position = None
        elif cfg.train.init_from and whole is not None:
            init_weights(whole, cfg.train.init_from)
        self.references = References.from_refs(inputs.references) if inputs.references else None

        model = build_on_meta(build) if Step.sharded else whole
        assert model is not None
        recompute_activations(model, cfg)
        if cfg.train.compile and (failed := compile_towers(model)) and self.rank == 0:
            print(f"train.compile: torch.compile cannot build here ({failed}); towers run eagerly")
        self.model = Step.prepare(model, cfg)
        raw = self.model.module if hasattr(self.model, "module") else self.model
        assert isinstance(raw, JointModel)  # DDP wraps it; FSDP2 shards it in place
        self.raw_model = raw
        self.sharded = Step.sharded
        self.eval_model = self.raw_model
        if self.sharded:
            spread_from_rank0(self.raw_model, whole, self.device)
            if whole is not None:
                self.eval_model = whole.to(self.device)
        self.frozen: FrozenFeatures | None = None
        if cached := cached_modalities(cfg):
            self.frozen = FrozenFeatures(self.raw_model, cached, cfg, self.prep, self.meta.dataset)
        self.steps_per_epoch = max(
            inputs.train_rows // max(self.world, 1) // self.per_worker_batch, 1
        )
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.optim, self.steps_per_epoch * cfg.train.epochs
        )
        self.full_optimizer: dict | None = None
        if self.resumed is not None:
            state = self.resumed.train_state["optimizer"]
            # Another strategy's (train.resume: force, same_run.check_strategy): left out.
            same = trained_strategy(self.resumed.meta) == cfg.train.strategy
            if same and self.sharded:
                load_optimizer_state(self.model, self.optimizer, state)
            elif same:
                self.optimizer.load_state_dict(state)
            self.scheduler.load_state_dict(self.resumed.train_state["scheduler"])
        self.take_step = Step(self.model, self.optimizer, self.scheduler, cfg, self.device)
        if self.resumed is not None:
            self.take_step.load_state_dict(self.resumed.train_state)

        # Each rank reads its own pieces, in an order drawn from (seed, epoch, world): a
        # checkpoint can then say where every rank is (data/order.py).
        configure_ray_data(cfg.data.stall_timeout_s, ordered=True)
        self.data = EpochData(inputs, cfg, self.rank, self.world, self.per_worker_batch)
        # data.mix: batches — each step's loss is its source's too (train/loss/<source>).
        self.source_names = [s.named() for s in cfg.data.sources] if self.data.by_source else []
        self.val = None  # rank 0 validates; val is not split across workers
        if self.rank == 0:
            keep = inputs.val_rows <= cfg.data.cache_val_rows
            self.val = ValBatches(
                ray.train.get_dataset_shard("val"), cfg.eval.batch_size, keep, self.references
            )
        self.bad_rows = BadRowCheck(inputs.bad_rows, cfg.data.max_bad_fraction, self.meta.dataset)
        self.live = live_metrics(cfg.train.name, self.rank)
        self.every_steps = cfg.train.checkpoint_every_steps
        self.every_s = cfg.train.checkpoint_every_minutes * 60
        self.last_checkpoint = (self.step, time.monotonic())
        self.trackers = None
        self.pause_s, self.checkpoint = 0.0, ""
        if self.rank == 0:
            self.trackers = Trackers(
                cfg.train.tracking,
                run_dir=self.run_dir,
                name=cfg.train.name,
                config=self.meta.config,
                ids=self.resumed.meta.tracking if self.resumed is not None else {},
                group=inputs.sweep,
                step=self.step,
                env=inputs.tracking_env,
            )

    @property
    def tracked(self) -> Trackers:
        """Rank 0's trackers: only rank 0 validates, logs and saves."""
        assert self.trackers is not None, "only rank 0 tracks"
        return self.trackers

    # ---- train ----
    def gather(self, optimizer: bool = False) -> None:
        """Under FSDP every rank calls it: rank 0's eval_model gets the full weights (and
        full_optimizer the optimizer state, for a checkpoint). Otherwise nothing to do."""
        if not self.sharded:
            return
        state = full_model_state(self.model)
        if optimizer:
            self.full_optimizer = full_optimizer_state(self.model, self.optimizer)
        if self.rank == 0:
            self.eval_model.load_state_dict(state)

    def train(self) -> dict[str, Any]:
        if self.resumed is None:  # the untrained baseline, for the curves
            self.gather()
            if self.rank == 0:
                self.history.append(val_losses(0, 0, self.validate()))
                self.tracked.log(self.history[-1], 0)
        if self.resumed is not None and self.resumed.unregistered:
            report_again(self.resumed, self.rank)
        for epoch in range(self.start_epoch, self.cfg.train.epochs + 1):
            stats = self.train_epoch(epoch)
            metrics = self.epoch_metrics(epoch, stats)
            self.gather(optimizer=True)
            if self.rank == 0:
                self.validate_and_save(epoch, stats.seconds, metrics)
            else:
                ray.train.report(metrics)
            self.last_checkpoint = (self.step, time.monotonic())
        if self.rank == 0:
            self.tracked.finish(self.checkpoint)
        return {
            "epochs_run": self.cfg.train.epochs - self.start_epoch + 1,
            "start_epoch": self.start_epoch,
        }

    def agreed(self, batches: Iterable[dict]) -> Iterator[tuple[dict, bool]]:
        """(batch, checkpoint after it?) while every rank has a batch: a rank whose stream
        ends (fewer rows, or bad ones dropped) ends the epoch for all, as drop_last would; a
        checkpoint is due after every_steps steps, or every_s seconds of rank 0's clock."""
        it = iter(batches)
        while True:
            raw = next(it, None)
            step, since = self.last_checkpoint
            late = self.rank == 0 and 0 < self.every_s <= time.monotonic() - since
            ended, late = any_rank([raw is None, late], self.device)
            if ended:
                return
            assert raw is not None  # this rank's stream ending ends the epoch for all
            due = late or 0 < self.every_steps <= self.step + 1 - step
            yield raw, due

    def train_epoch(self, epoch: int) -> EpochStats:
        cfg = self.cfg
        unlock_towers(self.raw_model, cfg, epoch)
        self.model.train()
        self.live.set_epoch(epoch)
        stats = EpochStats(cfg.train.log_every_steps)
        batches, self.epoch_step = self.data.batches(epoch, self.position, self.device)
        self.position = None
        sample_log = SampleLog(cfg.train.sample_log_dir, epoch, self.rank)
        shown = self.rank == 0 and self.inputs.progress
        bar = EpochBar(shown, epoch, cfg.train.epochs, self.steps_per_epoch, self.epoch_step)
        frozen = set(self.frozen.tables) if self.frozen else set()
        for raw, due in self.agreed(stats.timed(batches)):
            batch = Batch.from_dict(raw)
            if self.references:
                batch = self.references(batch)
            if self.frozen:
                batch = self.frozen(batch)
            with self.raw_model.using_features(frozen):
                loss, logs = self.optimize(batch, epoch)
            self.step += 1
            self.epoch_step += 1
            bar.step()
            sample_log.write(batch)
            log_step = self.step % cfg.train.log_every_steps == 0
            if log_step:  # fail early, not at the end
                self.bad_rows.check(min_rows=cfg.data.decode_batch_size)
            source = self.source_names[self.data.source] if self.source_names else ""
            stats.add(loss, logs, batch.size, source)
            stats.pairs(batch.present)
            self.live.count(batch.size)
            if log_step:
                self.log(epoch, stats.take_window())
            if due:
                self.save_mid_epoch(epoch)
        stats.finish()
        sample_log.close()
        bar.close()
        return stats

    def optimize(self, batch: Batch, epoch: int) -> tuple[float, dict[str, Any]]:
        try:
            return self.take_step(batch)
        except NonFiniteLoss as exc:
            raise FloatingPointError(f"{exc} at epoch {epoch}, step {self.step}") from None

    def log(self, epoch: int, window: LogWindow) -> None:
        self.live.record_step(window.by_term(), window.samples, window.seconds, window.wait_s)
        if self.rank != 0:
            return
        train = {f"train/{k}": v for k, v in (window.means | window.sources).items()}
        self.history.append({"step": self.step, "epoch": epoch, **train})
        self.tracked.log(train, self.step)
        rate = f"loss {window.means['loss']:.4f}  {window.samples_per_s(self.world):,.0f} samples/s"
        where = f"step {self.epoch_step}/{self.steps_per_epoch}"
        print(f"[epoch {epoch}/{self.cfg.train.epochs}] {where} {rate}", flush=True)

    def epoch_metrics(self, epoch: int, stats: EpochStats) -> dict[str, Any]:
        """Every rank reaches here with the same step count (equal shards, drop_last): the
        means over ranks are collective calls."""
        model = self.raw_model
        return {
            "epoch": epoch,
            "step": self.step,
            **stats.metrics(self.world, self.device),
            **self.bad_rows.epoch_metrics(),
            "train/read_from_cache": float(self.data.from_cache),  # rank 0's
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/logit_scale": float(model.logit_scale().detach()),
            # learned loss weights exp(-s_i) (objective.weighting: uncertainty)
            **{f"train/weight/{t}": math.exp(-float(s)) for t, s in model.loss_log_vars.items()},
        }

    # ---- validate and save (rank 0) ----
    def validate(self) -> dict[str, float]:
        assert self.val is not None, "only rank 0 validates"
        metrics, ranges = validate(self.eval_model, self.val, self.cfg, self.meta, self.device)
        if ranges:
            self.meta = self.meta.model_copy(update={"calibration": ranges})
        return metrics

    def validate_and_save(self, epoch: int, seconds: float, metrics: dict[str, Any]) -> None:
        metrics.update(self.validate())
        metrics.update(
            run_suites(self.eval_model, self.meta, self.cfg, epoch, self.device, metrics)
        )
        # The time training stood still for this epoch's earlier (mid-epoch) checkpoints.
        metrics["train/checkpoint_pause_s"], self.pause_s = self.pause_s, 0.0
        self.bad_rows.check()  # the val split's rows count too
        self.history.append(val_losses(self.step, epoch, metrics))
        # train/loss* at this step are the log window's (the curves'), not the epoch means.
        self.tracked.log({k: v for k, v in metrics.items() if "train/loss" not in k}, self.step)
        summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN if k in metrics)
        print(
            f"[epoch {epoch}/{self.cfg.train.epochs}] done in {seconds:.0f}s  {summary}  "
            f"{metrics['train/samples_per_s']:,.0f} samples/s",
            flush=True,
        )
        self.save(epoch, metrics)

    def save_mid_epoch(self, epoch: int) -> None:
        """A checkpoint inside `epoch`, with every rank's next stream positions; all ranks
        reach here at the same step (agreed)."""
        ranks = all_ranks(self.data.next, self.device)
        by_source = self.data.by_source
        position = Position(
            epoch=epoch,
            steps=self.epoch_step,
            world=self.world,
            next=[] if by_source else [r[0] for r in ranks],
            by_source=ranks if by_source else [],
            redealt=self.data.redealt,
        )
        metrics = {"step": self.step, "mid_epoch": epoch}
        self.gather(optimizer=True)
        if self.rank == 0:
            self.save(epoch - 1, metrics, position)
        else:
            ray.train.report(metrics)
        self.last_checkpoint = (self.step, time.monotonic())

    def save(self, epoch: int, metrics: dict[str, Any], position: Position | None = None) -> None:
        """A checkpoint with everything resuming needs, reported with the metrics; `epoch`
        the last whole one, `position` where each rank stands in the next (mid-epoch)."""
        began = time.perf_counter()
        meta = self.meta.model_copy(
            update={
                "epoch": epoch,
                "step": self.step,
                "position": position,
                "metrics": metrics,
                "history": self.history,
                "tracking": self.tracked.ids,
            }
        )
        train_state = {
            # under FSDP keyed by parameter name, not number
            "optimizer": self.full_optimizer if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self.take_step.state_dict(),
        }
        tmp = tempfile.mkdtemp(prefix="polymodal-checkpoint-")
        save_checkpoint(tmp, self.eval_model, meta, train_state)
        name = checkpoint_name()  # named here: an async upload names it later
        self.checkpoint = f"{self.run_dir}/{name}"
        if self.local:  # Train's local mode neither uploads nor deletes checkpoints
            kept = keep_checkpoint(tmp, name, self.upload, self.fs, self.run_dir, self.cfg.train)
            ray.train.report(metrics, checkpoint=kept)
        else:
            mode = self.cfg.train.checkpoint_upload
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=self.upload,
                # async: Ray uploads the directory in the background, then deletes it.
                checkpoint_upload_mode=ray.train.CheckpointUploadMode[mode.upper()],
                delete_local_checkpoint_after_upload=True,
            )
        self.pause_s += time.perf_counter() - began
        self.tracked.checkpointed(self.checkpoint)

    def upload(self, checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        """Ray's upload, with retries while the store is unreachable and polymodal.json last."""
        dest = f"{self.run_dir}/{name}"
        upload(checkpoint.path, self.fs, dest)
        return ray.train.Checkpoint(dest, filesystem=self.fs)
