"""Training workers SIGKILLed mid-epoch with step checkpoints, on two sources (digit images
with captions, spoken digits with captions; each global batch from one). Epoch 1 runs on 2
workers, is killed, resubmitted on 1 worker, killed again and resubmitted on 2: each resume
deals what the old ranks had left over the new ones. In epoch 2 Ray Train restarts the killed
worker group itself. Every sample of every epoch is trained, only the steps since a checkpoint
twice, and the run's TensorBoard, MLflow and W&B records continue across all of it."""

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
from tests.conftest import session_address
from tests.reliability.samples import (
    check_exact,
    faulted_run_config,
    split_keys,
    steps_trained,
    wait_until_mid_epoch,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

EVERY = 5  # train.checkpoint_every_steps


def _kill_a_worker_after(samples: Path, epoch: int, steps: int, killed: list) -> None:
    """SIGKILL a training worker once rank 0 has trained `steps` more steps of `epoch`."""
    from ray.util.state import list_actors

    assert wait_until_mid_epoch(samples, epoch, steps_trained(samples, epoch) + steps)
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    pid = list_actors(session_address(), filters=alive)[-1].pid
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def _fit_killed(cfg, samples: Path, epoch: int, steps: int, killed: list):
    killer = threading.Thread(target=_kill_a_worker_after, args=(samples, epoch, steps, killed))
    killer.start()
    try:
        return fit(cfg)  # Ray Train wants the driver's main thread
    finally:
        killer.join()


@pytest.fixture(scope="module")
def spoken_digits(tmp_path_factory) -> Path:
    """500 spoken digits with their captions: a second source, a quarter of the first's rows."""
    from polymodal.data.ingest import ingest

    out = tmp_path_factory.mktemp("data") / "digits-spoken"
    ingest("builtin:digits-spoken", out, limit=500, progress=False)
    return out


@pytest.fixture(scope="module")
def killed_run(ray_cluster, digits_dataset, spoken_digits, tmp_path_factory):
    """2 epochs with step checkpoints and every tracker: epoch 1 killed on 2 workers, then on
    1, each 2 steps after its first checkpoint (epoch steps 5 and 10), and finished on 2;
    epoch 2 killed 3 steps after its first checkpoint and restarted by Ray Train."""
    from ray.train import TrainingFailedError

    root = tmp_path_factory.mktemp("killed")
    samples, killed = root / "samples", []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        cfg = faulted_run_config(digits_dataset, root, "killed", spoken_digits)
        cfg.train.epochs, cfg.train.max_failures = 2, 0
        cfg.train.checkpoint_every_steps = EVERY
        cfg.train.tracking = ["tensorboard", "mlflow", "wandb"]
        for workers in (2, 1):
            cfg.train.num_workers = workers
            with pytest.raises(TrainingFailedError):
                _fit_killed(cfg, samples, 1, EVERY + 2, killed)
        position = read_meta(newest_checkpoint(str(root / "killed"))).position
        cfg.train.num_workers, cfg.train.max_failures = 2, 1
        result = _fit_killed(cfg, samples, 2, EVERY + 3, killed)
    return cfg, result, killed, root, position


def _train_keys(dataset: Path, speech: Path) -> set[int]:
    images, spoken = split_keys(dataset, "train"), split_keys(speech, "train")
    assert not images & spoken  # the sources' rows are told apart by id
    return images | spoken


def test_an_epoch_resumed_on_2_then_1_then_2_workers_trains_every_sample_once(
    killed_run, digits_dataset, spoken_digits
):
    cfg, result, killed, root, position = killed_run
    assert len(killed) == 3, "a run was not killed"
    # The checkpoint the 1-worker run left: its own steps, after the 2 workers' part.
    assert (position.epoch, position.steps, position.world) == (1, 2 * EVERY, 1)
    assert [(s.steps, s.world) for s in position.redealt] == [(EVERY, 2)]
    # The ranks hold equal rows of each source; drop_last leaves fewer than a batch of each
    # per worker.
    batch = cfg.train.batch_size
    train = _train_keys(digits_dataset, spoken_digits)
    first = check_exact(root / "samples", train, 1, lost_max=2 * batch)
    # Each kill repeats the steps after its checkpoint it cut short, and nothing else: fewer
    # than a checkpoint interval each (2 steps here, more when a busy host kills late).
    assert 0 < first <= 2 * EVERY * batch
    print(f"2 -> 1 -> 2 workers: {first} sample trainings repeated, none skipped")


def test_killed_workers_resume_mid_epoch_and_skip_nothing(
    killed_run, digits_dataset, spoken_digits, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg, result, _, root, _ = killed_run
    meta = read_meta(result.checkpoint)
    assert meta.epoch == 2 and meta.position is None
    epochs = [row["epoch"] for row in meta.history if "val/loss" in row]
    assert epochs == [0, 1, 2]  # the untrained baseline, then each epoch once
    assert result.metrics["val/accuracy"] > 0.5
    assert result.metrics["train/loss/images"] > 0 and result.metrics["train/loss/speech"] > 0
    batch = cfg.train.batch_size
    train = _train_keys(digits_dataset, spoken_digits)
    both = check_exact(root / "samples", train, 2, lost_max=2 * batch)
    second = both - check_exact(root / "samples", train, 1, lost_max=2 * batch)
    assert 0 < second <= EVERY * batch  # Ray's restart repeats at most a checkpoint interval
    images = split_keys(digits_dataset, "train")
    for log in (root / "samples").glob("epoch-*.txt"):  # a line per step: one source's rows
        for line in log.read_text().splitlines():
            keys = {int(k) for k in line.split()}
            assert keys <= images or not keys & images, f"{log.name}: a step mixed sources"
    print(f"a worker kill Ray restarted: {second} sample trainings repeated, none skipped")
    _check_tracking(Path(result.run_dir), meta, result.checkpoint)


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
    assert len(offline) == 4  # three submissions and a restart...
    assert {d.name.rsplit("-", 1)[1] for d in offline} == {meta.tracking["wandb"]}  # ...one run

    # The driver attaches what the finished run wrote (here without its HTML report).
    written = ["loss_curves.png", "metrics.json", "reconstructions.png"]
    assert attach_run_files(str(run_dir)) == written
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == written
    (attached,) = set((run_dir / "wandb" / "wandb").glob("offline-run-*")) - set(offline)
    summary = json.loads((attached / "files" / "metrics.json").read_text())
    assert summary["checkpoint"] == checkpoint
