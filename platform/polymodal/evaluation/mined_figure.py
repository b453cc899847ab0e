"""What `polymodal mine` chose, for a person to look at: a few train rows' anchor, their own
candidate and their mined negatives, as a picture (image negatives) or a table (text ones)."""

from __future__ import annotations

import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from polymodal.batch import split_direction  # noqa: E402
from polymodal.data.format import (  # noqa: E402
    negatives_column,
    open_shard,
    read_manifest,
    shard_paths,
)
from polymodal.evaluation.plots import _save  # noqa: E402


def mined_rows(dataset: str, key: str, rows: int = 5) -> list[dict[str, Any]]:
    """The first `rows` train rows (of the first shard) that hold negatives of `key`."""
    manifest = read_manifest(dataset)
    anchor, modality = split_direction(key)
    columns = ["id", anchor, modality, negatives_column(key)]
    table = open_shard(shard_paths(dataset, manifest, "train")[0]).read(columns=columns)
    found = [r for r in table.to_pylist() if r[negatives_column(key)] and r[anchor] is not None]
    return found[:rows]


def _pixels(value: bytes | None):
    """The picture, or None for a missing or undecodable one (training skips those too)."""
    try:
        return Image.open(io.BytesIO(value)).convert("RGB") if value is not None else None
    except (OSError, ValueError):
        return None


def plot_mined_negatives(found: list[dict[str, Any]], key: str, out: str) -> str | None:
    """Image negatives of mined_rows: each row's anchor (the label), its own image (green
    frame), then its negatives in rank order (red frames). None unless they are images."""
    anchor, modality = split_direction(key)
    if modality != "image" or not found:
        return None
    k = max(len(r[negatives_column(key)]) for r in found)
    fig, axes = plt.subplots(len(found), k + 1, figsize=(1.5 * (k + 1), 1.6 * len(found)))
    axes = axes.reshape(len(found), k + 1)
    for i, row in enumerate(found):
        shown = [row[modality], *row[negatives_column(key)]]
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            pixels = _pixels(shown[j]) if j < len(shown) else None
            if pixels is None:
                ax.axis("off")
                continue
            ax.imshow(pixels)
            for side in ax.spines.values():
                side.set_color("green" if j == 0 else "red")
                side.set_linewidth(2)
            ax.set_title("own" if j == 0 else f"negative {j}", fontsize=7)
        label = str(row[anchor])[:28] if anchor == "text" else f"{anchor} of {row['id']}"
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"mined {key} negatives", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def mined_table(found: list[dict[str, Any]], key: str) -> str:
    """Text negatives of mined_rows as an HTML table: anchor (text, or the row id), own text,
    negatives. Empty unless they are texts."""
    anchor, modality = split_direction(key)
    if modality != "text" or not found:
        return ""

    def shown(value: Any) -> str:
        return html.escape(str(value)[:80])

    lines = [f"<tr><th>{anchor}</th><th>its {modality}</th><th>mined negatives</th></tr>"]
    for row in found:
        who = shown(row[anchor]) if anchor == "text" else f"row {shown(row['id'])}"
        negatives = "<br>".join(shown(v) for v in row[negatives_column(key)] if v is not None)
        lines.append(f"<tr><td>{who}</td><td>{shown(row[modality])}</td><td>{negatives}</td></tr>")
    return f"<h3>mined {key} negatives</h3><table>{''.join(lines)}</table>"
