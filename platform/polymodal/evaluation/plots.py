"""PNG plots of a run: loss curves per term, written next to metrics.json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polymodal import storage  # noqa: E402

if TYPE_CHECKING:  # torch is imported only to plot reconstructions
    from polymodal.batch import Batch


def _save(fig, out: str | Path) -> str:
    """PNG to a local path or an s3:// URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(out, buf.getvalue())
    return str(out)


def plot_loss_curves(history: list[dict[str, float]], out: str | Path) -> str:
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
    return _save(fig, out)


def plot_reconstructions(model, batch: Batch, out: str | Path, n: int = 8) -> str | None:
    """Originals (top) over their reconstructions (bottom); None without an image decoder."""
    import torch

    if "image" not in getattr(model, "decoders", {}):
        return None
    images = batch.inputs["image"][:n]
    with torch.no_grad():
        recon = model.decoders["image"](model.project("image", images)).clamp(0, 1)
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.6), squeeze=False)
    for i in range(n):
        for row, img in ((0, images[i]), (1, recon[i])):
            ax = axes[row][i]
            pixels = img.permute(1, 2, 0).squeeze(-1).cpu().numpy()
            ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("input")
    axes[1][0].set_ylabel("decoded")
    fig.tight_layout()
    return _save(fig, out)


def plot_answers(rows: list[dict], label_names: list[str], out: str | Path, cols: int = 4) -> str:
    """A grid of val images, each with its question, the model's answer (green when right,
    red when wrong) and the truth."""
    from PIL import Image

    n = len(rows)
    grid = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(grid, cols, figsize=(3.0 * cols, 3.3 * grid), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(Image.open(io.BytesIO(row["image"])).convert("RGB"))
        right = row["answer"] == row["label"]
        truth = label_names[row["label"]] if row["label"] >= 0 else "?"
        ax.set_title(
            f"{row['text']}\n→ {label_names[row['answer']]} (truth: {truth})",
            fontsize=8,
            color="green" if right else "red",
        )
    fig.tight_layout()
    return _save(fig, out)
