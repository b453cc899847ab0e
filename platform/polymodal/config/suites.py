"""eval.suites: evaluation suites that training runs on rank 0 every N epochs (our val split,
mteb tasks, CLIP_benchmark datasets); each one's main score is a metric like any other."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from polymodal.sections import Section


class SuiteConfig(Section):
    """A suite: its main score is logged as suite/<name>/main_score (metrics.json, trackers,
    the run report) and each task's as suite/<name>/<task>; tune.metric may name it."""

    name: str = Field(description="Names its metrics: suite/<name>/...")
    kind: Literal["val", "mteb", "clip_benchmark"] = Field(
        description="val: the mean of val metrics (tasks); mteb: mteb's evaluation of tasks; "
        "clip_benchmark: the dataset at path."
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="val: val metric names; mteb: task names, or tasks built from `path`'s "
        "split: retrieval:A->B, probe:M, zeroshot:M.",
    )
    path: str = Field(
        "",
        description="clip_benchmark: its dataset directory (local or s3://); mteb: the polymodal "
        "dataset built tasks read (default: data.path).",
    )
    split: str = Field("", description="Default: val (mteb's built tasks), test (clip_benchmark).")
    every_epochs: int = Field(1, ge=1, description="Runs after every Nth epoch and the last.")


def check_suites(cfg) -> list[str]:
    """Names unique and usable in metric names; what each kind needs; a tune.metric of a suite
    names one that runs every epoch (Tune refuses a report without its metric)."""
    problems, names = [], []
    for i, s in enumerate(cfg.eval.suites):
        key = f"'eval.suites[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", s.name) or s.name in names:
            problems.append(f"{key}.name': {s.name!r} must be unique, letters, digits, _ . -")
        names.append(s.name)
        if s.kind in ("val", "mteb") and not s.tasks:
            problems.append(f"{key}.tasks': a {s.kind} suite names its tasks")
        if s.kind == "val" and (bad := [t for t in s.tasks if not t.startswith("val/")]):
            problems.append(f"{key}.tasks': {bad[0]!r} is not a val/ metric")
        if s.kind == "clip_benchmark" and not s.path:
            problems.append(f"{key}.path': a clip_benchmark suite names its dataset directory")
    metric = cfg.tune.metric
    if metric.startswith("suite/"):
        name = metric.split("/")[1]
        suite = next((s for s in cfg.eval.suites if s.name == name), None)
        if suite is None:
            problems.append(f"'tune.metric': {metric} names no suite of eval.suites {names}")
        elif suite.every_epochs != 1:
            problems.append(
                f"'tune.metric': {metric} needs eval.suites '{name}' every epoch (every_epochs: 1)"
            )
    return problems
