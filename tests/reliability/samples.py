"""The faulted training runs of tests/reliability: their config, and their
train.sample_log_dir read back (which samples each epoch trained on, what a restart
repeated, that none was skipped)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from polymodal.config import Config, load_config
from polymodal.data.format import read_manifest, shard_paths
from polymodal.data.pipeline import sample_key

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def faulted_run_config(
    dataset: Path | str, root: Path | str, name: str, speech: Path | str = ""
) -> Config:
    """digits for 3 epochs on 2 workers that may fail twice, run under ROOT/NAME, each step's
    sample ids logged to ROOT/samples; with `speech` (spoken digits), digits-bind.yaml's two
    sources, each global batch from one of them (data.mix: batches)."""
    data = [f"data.path={dataset}"]
    if speech:
        sources = f"[{{path: {dataset}, name: images}}, {{path: {speech}, name: speech}}]"
        data = [f"data.sources={sources}", "data.mix=batches"]
    return load_config(
        CONFIGS / ("digits-bind.yaml" if speech else "digits.yaml"),
        [*data, f"train.storage_path={root}", f"train.name={name}"]
        + ["train.epochs=3", "train.num_workers=2", "train.cpus_per_worker=0.5"]
        + ["train.max_failures=2", f"train.sample_log_dir={Path(root) / 'samples'}"],
    )


def split_keys(dataset: Path, split: str) -> set[int]:
    paths = shard_paths(str(dataset), read_manifest(str(dataset)), split)
    ids = [i for p in paths for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]
    return {sample_key(i) for i in ids}


def sample_log(directory: Path) -> dict[int, dict[int, list[int]]]:
    """epoch -> worker pid -> the sample keys it trained on, step after step."""
    seen: dict[int, dict[int, list[int]]] = defaultdict(dict)
    for f in directory.glob("epoch-*-rank-*-pid-*.txt"):
        _, epoch, _, _, _, pid = f.stem.split("-")
        seen[int(epoch)][int(pid)] = [int(k) for line in f.open() for k in line.split()]
    return seen


def check_samples(directory: Path, train: set[int], epochs: int, start: int, lost_max: int):
    """Each epoch the final model went through covered the train split once (less drop_last's
    remainder); the restarted epoch's interrupted part is all that was repeated (returned)."""
    seen = sample_log(directory)
    first, last = set(seen[1]), set(seen[epochs])
    repeated = 0
    for epoch in range(1, epochs + 1):
        kept = first if epoch < start else last
        trained = [k for pid in kept for k in seen[epoch].get(pid, [])]
        assert len(trained) == len(set(trained)), f"epoch {epoch} repeated samples"
        assert set(trained) <= train
        assert len(train) - len(trained) <= lost_max, f"epoch {epoch} skipped samples"
        repeated += sum(len(ids) for pid, ids in seen[epoch].items() if pid not in kept)
    assert repeated <= len(train)  # at most one checkpoint interval (an epoch)
    return repeated


def check_exact(directory: Path, train: set[int], epochs: int, lost_max: int) -> int:
    """Every epoch, over all the processes that trained it, covered the train split (less
    drop_last's remainder): nothing skipped. Returns how many trainings were repeats."""
    seen = sample_log(directory)
    repeated = 0
    for epoch in range(1, epochs + 1):
        counts = Counter(k for ids in seen[epoch].values() for k in ids)
        assert set(counts) <= train
        assert len(train) - len(counts) <= lost_max, f"epoch {epoch} skipped samples"
        repeated += sum(c - 1 for c in counts.values())
    return repeated


def steps_trained(directory: Path, epoch: int) -> int:
    """Steps of `epoch` rank 0 has trained so far (lines of its sample logs)."""
    logs = directory.glob(f"epoch-{epoch}-rank-0-*.txt")
    return sum(len(f.read_text().splitlines()) for f in logs)


def wait_until_mid_epoch(directory: Path, epoch: int, steps: int = 3, timeout_s=300) -> bool:
    """Until rank 0 has trained `steps` steps of `epoch` (its sample log says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if steps_trained(directory, epoch) >= steps:
            return True
        time.sleep(0.02)
    return False
