"""A finished sweep's outputs: the table of trials (CSV and Parquet), a PNG of the metric
against each searched key, and the best trial's best checkpoint copied to best/."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from polymodal import storage
from polymodal.config import Config
from polymodal.tune.space import is_log_scale


@dataclass
class SweepResult:
    sweep_dir: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # the best row
    best_checkpoint: str | None  # sweep_dir/best


def trial_rows(results, cfg: Config, sweep_dir: str) -> list[dict[str, Any]]:
    """One row per trial: searched values, final and best metric, epochs run, stop reason
    and the checkpoint where the metric was best."""
    t = cfg.tune
    pick = max if t.mode == "max" else min
    rows = []
    for result in results:
        df = result.metrics_dataframe
        reports = [] if df is None else df.to_dict("records")
        scored = [r for r in reports if _finite(r.get(t.metric))]
        best = pick(scored, key=lambda r: r[t.metric]) if scored else {}
        epochs = int(max((r.get("epoch", 0) for r in reports), default=0))
        if result.error is not None:
            reason = f"error: {type(result.error).__name__}"
        elif epochs >= cfg.train.epochs:
            reason = "completed"
        else:
            reason = f"stopped early ({t.scheduler})"
        trial_id = (reports[-1].get("trial_id") if reports else None) or result.path
        rows.append(
            {
                "trial_id": str(trial_id),
                **{key: result.config.get(key) for key in t.space},
                f"final {t.metric}": scored[-1][t.metric] if scored else None,
                f"best {t.metric}": best.get(t.metric),
                "best_epoch": best.get("epoch"),
                "epochs_run": epochs,
                "stop_reason": reason,
                "checkpoint": storage.uri_of(best[CHECKPOINT_PATH_KEY], sweep_dir)
                if best.get(CHECKPOINT_PATH_KEY)
                else None,
            }
        )
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_results(results, cfg: Config, sweep_dir: str) -> SweepResult:
    rows = trial_rows(results, cfg, sweep_dir)
    table = pa.Table.from_pylist([{k: _cell(v) for k, v in r.items()} for r in rows])
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    storage.write_bytes(storage.join(sweep_dir, "trials.csv"), buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(sweep_dir, "trials.parquet"), buf.getvalue())
    storage.write_bytes(storage.join(sweep_dir, "metric_vs_space.png"), plot_png(rows, cfg))

    best_key = f"best {cfg.tune.metric}"
    scored = [r for r in rows if _finite(r[best_key]) and r["checkpoint"]]
    if not scored:
        return SweepResult(sweep_dir, rows, None, None)
    pick = max if cfg.tune.mode == "max" else min
    best = pick(scored, key=lambda r: r[best_key])
    best_dir = storage.join(sweep_dir, "best")
    storage.replace_dir(best["checkpoint"], best_dir)
    return SweepResult(sweep_dir, rows, best, best_dir)


def _cell(value):
    """Parquet needs one type per column: searched lists and mixed values become text."""
    return str(value) if isinstance(value, (list, dict)) else value


def plot_png(rows: list[dict[str, Any]], cfg: Config) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cfg.tune.space)
    metric = f"best {cfg.tune.metric}"
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for done, marker, label in ((True, "o", "completed"), (False, "x", "stopped early")):
            pts = [
                (r[key], r[metric])
                for r in rows
                if _finite(r[metric]) and (r["stop_reason"] == "completed") == done
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter([_x(x) for x in xs], ys, marker=marker, label=label)
        if is_log_scale(cfg, key):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{cfg.train.name}: {cfg.tune.metric} ({cfg.tune.mode}) per trial")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _x(value):
    return value if isinstance(value, (int, float)) else str(value)
