"""Experiment trackers fed by rank 0 inside the training function (train.tracking): TensorBoard,
MLflow and W&B, with metrics.json's names and steps; a resumed run continues its tracked run."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from polymodal import storage
from polymodal.checkpoint import META, fetch_checkpoint, read_meta
from polymodal.train.same_run import flat


def _local_dir(run_dir: str, sub: str) -> str:
    """Where a tracker writes its files: in the run directory when it is local, else in a
    temporary directory copied there (sync_dir) at each checkpoint and at the end."""
    if storage.is_remote(run_dir):
        return tempfile.mkdtemp(prefix=f"polymodal-{sub}-")
    path = Path(run_dir, sub)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def sync_dir(local: str, run_dir: str, sub: str) -> None:
    if not storage.is_remote(run_dir):
        return
    for file in Path(local).rglob("*"):
        if file.is_file():
            storage.write_bytes(
                storage.join(run_dir, sub, str(file.relative_to(local))), file.read_bytes()
            )


class TensorBoard:
    """Event files in <run dir>/tensorboard; a resumed run appends new ones, and purge_step
    drops what the interrupted process logged after its checkpoint."""

    def __init__(
        self, run_dir: str, name: str, config: dict, run_id: str | None, group: str, step: int
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.dir = run_dir, _local_dir(run_dir, "tensorboard")
        self.writer = SummaryWriter(self.dir, purge_step=step + 1 if run_id else None)
        if not run_id:
            self.writer.add_text("config", f"```\n{config}\n```", 0)
        self.id = name

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def checkpointed(self, checkpoint: str) -> None:
        self.writer.flush()
        sync_dir(self.dir, self.run_dir, "tensorboard")

    def finish(self, checkpoint: str) -> None:
        self.writer.add_text("checkpoint", checkpoint)
        self.writer.close()
        sync_dir(self.dir, self.run_dir, "tensorboard")


MLFLOW_KEY = re.compile(r"[^\w./\- :]")  # what MLflow refuses in a metric or param name


def mlflow_key(key: str) -> str:
    """MLflow's form of a metric name: '@' and '->' (recall@K/a->b) are not allowed there."""
    return MLFLOW_KEY.sub("_", key.replace("->", "_to_").replace("@", "_at_"))


def mlflow_store(run_dir: str) -> tuple[str, str | None]:
    """The tracking URI and, for our own store, where artifacts go: MLFLOW_TRACKING_URI, or a
    SQLite store in <run dir>/mlflow."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri, None
    if storage.is_remote(run_dir):
        raise ValueError(
            f"train.tracking: mlflow: the run directory {run_dir} is not local; set "
            "MLFLOW_TRACKING_URI to your MLflow server"
        )
    local = _local_dir(run_dir, "mlflow")
    return f"sqlite:///{local}/mlflow.db", Path(local, "artifacts").as_uri()


class MLflow:
    """A run under the experiment tracking_project (a sweep: <project>/<sweep>), in
    MLFLOW_TRACKING_URI or a SQLite store in <run dir>/mlflow; the config as parameters."""

    def __init__(
        self, run_dir: str, name: str, config: dict, run_id: str | None, group: str, step: int
    ):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri, artifacts = mlflow_store(run_dir)
        self.client = client = MlflowClient(uri)
        project = config["train"]["tracking_project"]
        experiment = f"{project}/{group}" if group else project
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found else client.create_experiment(experiment, artifacts)
        )
        if run_id:
            client.update_run(run_id, status="RUNNING")
            self.id = run_id
            return
        tags = {"polymodal.sweep": group} if group else {}
        self.id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param(mlflow_key(k), str(v)[:6000]) for k, v in flat(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 params a call
            client.log_batch(self.id, params=params[start : start + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.id, metrics=rows)

    def checkpointed(self, checkpoint: str) -> None:
        self.client.set_tag(self.id, "checkpoint", checkpoint)

    def finish(self, checkpoint: str) -> None:
        self.client.set_tag(self.id, "checkpoint", checkpoint)
        self.client.set_terminated(self.id)


class WandB:
    """A W&B run in project tracking_project (grouped by sweep), files in <run dir>/wandb;
    metrics plotted against `step`, so a resumed run's repeated steps are accepted."""

    def __init__(
        self, run_dir: str, name: str, config: dict, run_id: str | None, group: str, step: int
    ):
        import wandb

        self.run = wandb.init(
            project=config["train"]["tracking_project"],
            name=name,
            id=run_id or uuid.uuid4().hex[:12],
            resume="allow",
            group=group or None,
            config=config,
            dir=_local_dir(run_dir, "wandb"),
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({"step": step, **metrics})

    def checkpointed(self, checkpoint: str) -> None:
        self.run.summary["checkpoint"] = checkpoint

    def finish(self, checkpoint: str) -> None:
        self.run.summary["checkpoint"] = checkpoint
        self.run.finish()


class Tracker(Protocol):
    """What TensorBoard, MLflow and WandB each do; `id` is what a resume continues."""

    id: str

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def checkpointed(self, checkpoint: str) -> None: ...
    def finish(self, checkpoint: str) -> None: ...


# (run_dir, name, config, run_id, group, step) → a tracker
TRACKERS: dict[str, Callable[[str, str, dict, str | None, str, int], Tracker]] = {
    "tensorboard": TensorBoard,
    "mlflow": MLflow,
    "wandb": WandB,
}
# Where the trackers write, as the driver's environment says, for the workers (which may run
# on other nodes); keys such as WANDB_API_KEY are not carried: they are the workers' own.
CARRIED_ENV = ("WANDB_MODE", "MLFLOW_TRACKING_URI")


def tracking_env() -> dict[str, str]:
    return {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}


class Trackers:
    """The run's trackers; `ids` go into each checkpoint so that a resume continues them."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        run_dir: str,
        name: str,
        config: dict,
        ids: dict[str, str],
        group: str = "",
        step: int = 0,
        env: dict[str, str] | None = None,
    ):
        """names: train.tracking; name: the run's; config: logged with it; ids: the tracked
        runs to continue (a resumed checkpoint's); group: the sweep; step: where it stands;
        env: the trackers' settings from the driver's environment."""
        os.environ.update(env or {})
        self.all = {n: TRACKERS[n](run_dir, name, config, ids.get(n), group, step) for n in names}

    @property
    def ids(self) -> dict[str, str]:
        return {n: t.id for n, t in self.all.items()}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"
        }
        for tracker in self.all.values():
            tracker.log(numbers, step)

    def checkpointed(self, checkpoint: str) -> None:
        for tracker in self.all.values():
            tracker.checkpointed(checkpoint)

    def finish(self, checkpoint: str) -> None:
        for tracker in self.all.values():
            tracker.finish(checkpoint)


# What a finished run leaves in its directory besides checkpoints, attached to its tracked runs.
RUN_FILES = ("metrics.json", "loss_curves.png", "reconstructions.png", "report/")


def attach_run_files(run_dir: str) -> list[str]:
    """On the driver once the run and its report are written: metrics.json, the plots and the
    report as MLflow artifacts and W&B run files (TensorBoard keeps no files). Returns the
    names attached."""
    summary = json.loads(storage.read_bytes(storage.join(run_dir, "metrics.json")))
    meta = read_meta(fetch_checkpoint(summary["checkpoint"], files=(META,)))
    ids, root = meta.tracking, str(run_dir).rstrip("/")
    names = [
        f[len(root) + 1 :]
        for f in storage.list_files(root)
        if f[len(root) + 1 :].startswith(RUN_FILES)
    ]

    def copy_to(directory: str) -> None:
        for name in names:
            Path(directory, name).parent.mkdir(parents=True, exist_ok=True)
            Path(directory, name).write_bytes(storage.read_bytes(storage.join(root, name)))

    if "mlflow" in ids:
        from mlflow import MlflowClient

        with tempfile.TemporaryDirectory() as tmp:
            copy_to(tmp)
            MlflowClient(mlflow_store(root)[0]).log_artifacts(ids["mlflow"], tmp)
    if "wandb" in ids:
        import wandb

        run = wandb.init(
            project=meta.run_config(checked=False).train.tracking_project,
            id=ids["wandb"],
            resume="allow",
            dir=_local_dir(root, "wandb"),
            settings=wandb.Settings(silent=True, console="off"),
        )
        copy_to(run.dir)  # W&B uploads what its run directory holds
        run.finish()
    return names if {"mlflow", "wandb"} & ids.keys() else []
