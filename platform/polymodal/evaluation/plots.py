"""PNG plots of a run: loss curves per term, written next to metrics.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(history: list[dict[str, float]], out: str | Path) -> Path:
    """history: rows with "step" and train/loss... keys (and val/loss... once per epoch)."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, prefix in ((ax_train, "train/loss"), (ax_val, "val/loss")):
        keys = sorted({k for row in history for k in row if k.startswith(prefix)})
        keys = [k for k in keys if k.count("/") <= 2]  # total and per term, not per pair
        for key in keys:
            pts = [(row["step"], row[key]) for row in history if key in row]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if prefix == "val/loss" else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(prefix)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
