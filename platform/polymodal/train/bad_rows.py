"""Rows dropped by decoding during a run: per-epoch metrics, the data.max_bad_fraction limit,
and the run dir's bad_rows.json (counts by split and reason, a sample of row ids)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from polymodal import storage

BAD_ROWS_FILE = "bad_rows.json"


class BadDataError(ValueError):
    """Too many rows of a run's dataset could not be used."""


def bad_fraction(totals: dict[str, Any]) -> tuple[int, int, float]:
    """(bad rows, rows read, fraction) over every split read so far."""
    seen = sum(totals["seen"].values())
    bad = sum(n for counts in totals["bad"].values() for n in counts.values())
    return bad, seen, bad / seen if seen else 0.0


def check_bad_fraction(totals: dict[str, Any], max_fraction: float, dataset: str) -> None:
    bad, seen, fraction = bad_fraction(totals)
    if fraction <= max_fraction:
        return
    reasons: dict[str, int] = {}
    for counts in totals["bad"].values():
        for reason, n in counts.items():
            reasons[reason] = reasons.get(reason, 0) + n
    listed = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))
    by_source = [  # a mixture's: which source the bad rows came from
        f"{name} {sum(c.values()) - c['seen']} of {c['seen']}"
        for name, c in totals.get("sources", {}).items()
    ]
    if by_source:
        listed += f"; by source: {', '.join(by_source)}"
    raise BadDataError(
        f"{dataset}: {bad} of {seen} rows read ({fraction:.2%}) could not be used ({listed}), "
        f"more than data.max_bad_fraction {max_fraction:.2%}; the rejected ids are listed in "
        f"the run dir's {BAD_ROWS_FILE} and by `polymodal data validate {dataset}`"
    )


def epoch_metrics(totals: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, float]:
    """train/bad_rows (and per reason) dropped since `previous`, and the run's bad fraction."""
    now = totals["bad"].get("train", {})
    before = (previous or {"bad": {}})["bad"].get("train", {})
    metrics = {f"train/bad_rows/{r}": float(n - before.get(r, 0)) for r, n in now.items()}
    metrics["train/bad_rows"] = float(sum(now.values()) - sum(before.values()))
    metrics["train/bad_fraction"] = bad_fraction(totals)[2]
    return metrics


@dataclass
class BadRowCheck:
    """A worker's view of the run's BadRows actor (None: nothing is counted, nothing checked)."""

    actor: Any
    max_fraction: float  # data.max_bad_fraction
    dataset: str
    before: dict[str, Any] | None = None  # the totals at the end of the previous epoch

    def check(self, min_rows: int = 0) -> dict[str, Any]:
        """The run's totals; BadDataError once they pass max_fraction, checked when at least
        min_rows were read (a first few bad rows are no fraction yet)."""
        if self.actor is None:
            return {}
        import ray

        totals = ray.get(self.actor.totals.remote())
        if bad_fraction(totals)[1] >= min_rows:
            check_bad_fraction(totals, self.max_fraction, self.dataset)
        return totals

    def epoch_metrics(self) -> dict[str, float]:
        """Checked again; epoch_metrics since the previous call."""
        if self.actor is None:
            return {}
        totals = self.check()
        metrics = epoch_metrics(totals, self.before)
        self.before = totals
        return metrics


def write_bad_rows(run_dir: str, totals: dict[str, Any]) -> None:
    bad, seen, fraction = bad_fraction(totals)
    report = {"rows_read": seen, "bad_rows": bad, "bad_fraction": fraction, **totals}
    storage.write_bytes(storage.join(run_dir, BAD_ROWS_FILE), json.dumps(report, indent=2).encode())
