"""Training workers SIGKILLed twice mid-epoch with step checkpoints, on two sources (digit
images with captions, spoken digits with captions; each global batch from one): Ray Train
restarts the worker group, each time every rank resumes each source's stream at its next
unseen batch, and the run finishes with every sample of every epoch trained, only the steps
since a checkpoint twice. The run's TensorBoard, MLflow and W&B records continue across the
restarts."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from polymodal.checkpoint import newest_checkpoint, read_meta
from polymodal.train.run import fit
from polymodal.train.tracking import attach_run_files
from tests.reliability.samples import (
    check_exact,
    faulted_run_config,
    split_keys,
    steps_trained,
    wait_until_mid_epoch,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

EVERY = 5  # train.checkpoint_every_steps


def _kill_workers_twice(samples: Path, killed: list):
    from ray.util.state import list_actors

    for epoch, steps in ((2, EVERY + 3), (3, EVERY + 2)):
        if not wait_until_mid_epoch(samples, epoch, steps):
            return
        alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        workers = list_actors(filters=alive)
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append(workers[-1].pid)


@pytest.fixture(scope="module")
def spoken_digits(tmp_path_factory) -> Path:
    """500 spoken digits with their captions: a second source, a quarter of the first's rows."""
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits-spoken"
    ingest("builtin:digits-spoken", out, limit=500, progress=False)
    return out


@pytest.fixture(scope="module")
def killed_run(ray_cluster, digits_dataset, spoken_digits, tmp_path_factory):
    """digits and spoken digits with step checkpoints and every tracker, its workers killed
    twice."""
    root = tmp_path_factory.mktemp("killed")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        cfg = faulted_run_config(digits_dataset, root, "killed", spoken_digits)
        cfg.train.checkpoint_every_steps = EVERY
        cfg.train.tracking = ["tensorboard", "mlflow", "wandb"]
        killed: list[int] = []
        killer = threading.Thread(target=_kill_workers_twice, args=(root / "samples", killed))
        killer.start()
        result = fit(cfg)  # Ray Train wants the driver's main thread
        killer.join()
    return cfg, result, killed, root


def _train_keys(dataset: Path, speech: Path) -> set[int]:
    images, spoken = split_keys(dataset, "train"), split_keys(speech, "train")
    assert not images & spoken  # the sources' rows are told apart by id
    return images | spoken


def test_killed_workers_resume_mid_epoch_and_skip_nothing(
    killed_run, digits_dataset, spoken_digits, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg, result, killed, root = killed_run
    assert len(killed) == 2, "no worker was alive to kill"
    meta = read_meta(result.checkpoint)
    assert meta.epoch == 3 and meta.position is None
    epochs = [row["epoch"] for row in meta.history if "val/loss" in row]
    assert epochs == [0, 1, 2, 3]  # the untrained baseline, then each epoch once
    assert result.metrics["val/accuracy"] > 0.5
    assert result.metrics["train/loss/images"] > 0 and result.metrics["train/loss/speech"] > 0
    # The ranks hold equal rows of each source; drop_last leaves fewer than a batch of each
    # per worker.
    global_batch = cfg.train.batch_size
    train = _train_keys(digits_dataset, spoken_digits)
    repeated = check_exact(root / "samples", train, 3, lost_max=2 * global_batch)
    images = split_keys(digits_dataset, "train")
    for log in (root / "samples").glob("epoch-*.txt"):  # a line per step: one source's rows
        for line in log.read_text().splitlines():
            keys = {int(k) for k in line.split()}
            assert keys <= images or not keys & images, f"{log.name}: a step mixed sources"
    assert repeated <= 2 * EVERY * global_batch
    print(f"two worker kills: {repeated} sample trainings repeated, none skipped")
    _check_tracking(Path(result.run_dir), meta, result.checkpoint)


def _kill_a_worker_after(samples: Path, steps: int) -> None:
    """SIGKILL a training worker once rank 0 has trained `steps` more steps of epoch 1."""
    from ray.util.state import list_actors

    assert wait_until_mid_epoch(samples, 1, steps_trained(samples, 1) + steps)
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    os.kill(list_actors(filters=alive)[-1].pid, signal.SIGKILL)


def test_an_epoch_resumed_on_2_then_1_then_2_workers_trains_every_sample_once(
    ray_cluster, digits_dataset, spoken_digits, tmp_path
):
    """Elastic exact resume by kills and resubmission: 2 workers killed 2 steps after a
    checkpoint, the same run on 1 worker killed likewise, then on 2 again. Each resume deals
    what the ranks had left over the new ones: the epoch trains every sample once, but for
    the steps each kill cut short."""
    from ray.train import TrainingFailedError

    cfg = faulted_run_config(digits_dataset, tmp_path, "elastic", spoken_digits)
    cfg.train.epochs, cfg.train.max_failures = 1, 0
    cfg.train.checkpoint_every_steps = EVERY
    samples = tmp_path / "samples"
    # Each run is killed 2 steps after its first checkpoint (at epoch steps 5 and 10).
    for workers in (2, 1):
        cfg.train.num_workers = workers
        killer = threading.Thread(target=_kill_a_worker_after, args=(samples, EVERY + 2))
        killer.start()
        with pytest.raises(TrainingFailedError):
            fit(cfg)
        killer.join()
    position = read_meta(newest_checkpoint(str(tmp_path / "elastic"))).position
    assert (position.epoch, position.steps, position.world) == (1, 2 * EVERY, 1)
    assert [(s.steps, s.world) for s in position.redealt] == [(EVERY, 2)]

    cfg.train.num_workers = 2
    result = fit(cfg)
    meta = read_meta(result.checkpoint)
    assert meta.epoch == 1 and meta.position is None
    train = _train_keys(digits_dataset, spoken_digits)
    repeated = check_exact(samples, train, 1, lost_max=2 * cfg.train.batch_size)
    # Each kill repeats the two steps after its checkpoint, and nothing else.
    assert 0 < repeated <= 2 * 2 * cfg.train.batch_size
    print(f"2 -> 1 -> 2 workers: {repeated} sample trainings repeated, none skipped")


def _check_tracking(run_dir: Path, meta: dict, checkpoint: str) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val_steps = [row["step"] for row in meta.history if "val/loss" in row]
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("val/loss")] == val_steps  # baseline, epochs
    train_steps = [e.step for e in board.Scalars("train/loss")]
    assert train_steps == sorted(set(train_steps))  # a restart's repeated steps purged

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "polymodal"]
    (run,) = client.search_runs([experiment.experiment_id])  # one run, continued
    assert run.data.params["train.checkpoint_every_steps"] == str(EVERY)
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert sorted({m.step for m in history}) == val_steps
    assert run.data.tags["checkpoint"] == checkpoint and run.info.status == "FINISHED"
    assert meta.tracking["mlflow"] == run.info.run_id

    offline = list((run_dir / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 3  # the first group and two restarts...
    assert {d.name.rsplit("-", 1)[1] for d in offline} == {meta.tracking["wandb"]}  # ...one run

    # The driver attaches what the finished run wrote (here without its HTML report).
    written = ["loss_curves.png", "metrics.json", "reconstructions.png"]
    assert attach_run_files(str(run_dir)) == written
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == written
    (attached,) = set((run_dir / "wandb" / "wandb").glob("offline-run-*")) - set(offline)
    summary = json.loads((attached / "files" / "metrics.json").read_text())
    assert summary["checkpoint"] == checkpoint
