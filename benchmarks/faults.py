"""Accuracy after a fault: the digits config trained uninterrupted and with a training worker
SIGKILLed mid-run (Ray Train restarts the group, the run resumes), several times each; JSON.

Run: .venv/bin/python benchmarks/faults.py [--runs 3] [--epochs 3] [--case accuracy|repeats]
accuracy (issue 9): the resumed runs' val accuracy within 1 percentage point of the
uninterrupted ones'; compare means, and the spread.
repeats (issue 19): sample trainings repeated after one worker kill at step 18 of epoch 2,
with checkpoints per epoch vs every 5 steps (the sample log), and the throughput of
uninterrupted runs with per-epoch, every-5-step and every-5-step async checkpoints (ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "digits.yaml"


def kill_a_worker_mid_epoch_2(samples: Path, killed: list, steps: int = 3) -> None:
    """SIGKILL a training worker once rank 0 has trained `steps` steps of epoch 2 (its sample
    log)."""
    from ray.util.state import list_actors

    while sum(len(f.read_text().splitlines()) for f in samples.glob("epoch-2-rank-0-*")) < steps:
        time.sleep(0.02)
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if workers:
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)


def repeated(samples: Path) -> int:
    """Sample trainings beyond the first of each sample in each epoch (the sample log)."""
    counts: dict[str, Counter] = {}
    for f in samples.glob("epoch-*-rank-*-pid-*.txt"):
        epoch = f.stem.split("-")[1]
        counts.setdefault(epoch, Counter()).update(f.read_text().split())
    return sum(c - 1 for epoch in counts.values() for c in epoch.values())


# name -> overrides: checkpoints per epoch (as before), every 5 steps, and every 5 steps
# uploaded in the background.
CHECKPOINTS = {
    "epoch": [],
    "every5": ["train.checkpoint_every_steps=5"],
    "every5_async": ["train.checkpoint_every_steps=5", "train.checkpoint_upload=async"],
}
KILL_AT_STEP = 18  # of digits' 25 per epoch: late, where checkpoints inside the epoch pay off


def case_repeats(tmp: Path, epochs: int, runs: int) -> dict:
    from polymodal.config import load_config
    from polymodal.train.run import fit

    out: dict[str, list] = {}
    for run in range(runs):
        for kind, extra in CHECKPOINTS.items():
            for kill in (False, True) if kind != "every5_async" else (False,):
                name = f"{kind}-{'kill' if kill else 'clean'}-{run}"
                cfg = load_config(
                    str(CONFIG),
                    [f"data.path={tmp / 'digits'}", f"train.storage_path={tmp}"]
                    + [f"train.name={name}", f"train.epochs={epochs}"]
                    + ["train.cpus_per_worker=0.5", "train.max_failures=2", *extra]
                    + [f"train.sample_log_dir={tmp / name / 'samples'}"],
                )
                killed: list[int] = []
                killer = threading.Thread(
                    target=kill_a_worker_mid_epoch_2,
                    args=(tmp / name / "samples", killed, KILL_AT_STEP),
                )
                if kill:
                    killer.start()
                result = fit(cfg)
                if kill:
                    killer.join()
                    out.setdefault(f"repeated_{kind}", []).append(repeated(tmp / name / "samples"))
                else:
                    out.setdefault(f"samples_per_s_{kind}", []).append(
                        result.metrics["train/samples_per_s"]
                    )
    mean = {k: statistics.mean(v) for k, v in out.items()}
    return {
        "case": "repeats",
        "config": "digits",
        "epochs": epochs,
        "runs": runs,
        "kill_at_step": KILL_AT_STEP,
        **{k: [round(x, 1) for x in v] for k, v in out.items()},
        "repeats_ratio_every5_vs_epoch": round(
            mean["repeated_every5"] / max(mean["repeated_epoch"], 1), 3
        ),
        **{
            f"throughput_ratio_{kind}_vs_epoch": round(
                mean[f"samples_per_s_{kind}"] / mean["samples_per_s_epoch"], 3
            )
            for kind in ("every5", "every5_async")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--case", default="accuracy", choices=["accuracy", "repeats"])
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from polymodal.config import load_config
    from polymodal.data.ingest import ingest
    from polymodal.train.run import fit

    tmp = Path(tempfile.mkdtemp(prefix="faults-"))
    ingest("builtin:digits", tmp / "digits", progress=False)
    # The State API (dashboard) finds the workers to kill; workers' logs stay off stdout.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    if args.case == "repeats":
        print(json.dumps(case_repeats(tmp, args.epochs, args.runs)))
        ray.shutdown()
        return
    accuracy: dict[str, list[float]] = {"uninterrupted": [], "worker_killed": []}
    resumed_at = []
    for run in range(args.runs):
        for kind in accuracy:
            name = f"{kind}-{run}"
            cfg = load_config(
                str(CONFIG),
                [f"data.path={tmp / 'digits'}", f"train.storage_path={tmp}", f"train.name={name}"]
                + [f"train.epochs={args.epochs}", "train.cpus_per_worker=0.5"]
                + ["train.max_failures=2", f"train.sample_log_dir={tmp / name / 'samples'}"],
            )
            killed: list[int] = []
            killer = None
            if kind == "worker_killed":
                killer = threading.Thread(
                    target=kill_a_worker_mid_epoch_2, args=(tmp / name / "samples", killed)
                )
                killer.start()
            result = fit(cfg)
            if killer is not None:
                killer.join()
                assert killed, "no worker was alive to kill"
                resumed_at.append(args.epochs - result.epochs_run + 1)
            accuracy[kind].append(result.metrics["val/accuracy"])
    ray.shutdown()
    mean = {k: statistics.mean(v) for k, v in accuracy.items()}
    delta_pp = 100 * (mean["worker_killed"] - mean["uninterrupted"])
    print(
        json.dumps(
            {
                "config": "digits",
                "epochs": args.epochs,
                "runs": args.runs,
                "val_accuracy": {k: [round(a, 4) for a in v] for k, v in accuracy.items()},
                "mean": {k: round(v, 4) for k, v in mean.items()},
                "stdev_uninterrupted": round(statistics.pstdev(accuracy["uninterrupted"]), 4),
                "resumed_at_epoch": resumed_at,
                "delta_pp": round(delta_pp, 2),
                "target_met": abs(delta_pp) <= 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
