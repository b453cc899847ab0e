"""`polymodal report RUN_DIR`: one HTML page of a finished run (loss curves, recall/accuracy
table, retrieval gallery, 2-D projection of val embeddings, config) with its PNGs beside it."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from polymodal import storage  # noqa: E402
from polymodal.batch import Batch  # noqa: E402
from polymodal.checkpoint import fetch_checkpoint, load_model  # noqa: E402
from polymodal.data.dataset import (  # noqa: E402
    data_sources,
    dataset_manifest,
    iter_tables,
)
from polymodal.data.decode import decode_columns  # noqa: E402
from polymodal.data.format import mined, read_columns, read_manifest  # noqa: E402
from polymodal.data.tars import is_webdataset_path  # noqa: E402
from polymodal.evaluation.answers import answered_rows  # noqa: E402
from polymodal.evaluation.mined_figure import (  # noqa: E402
    mined_rows,
    mined_table,
    plot_mined_negatives,
)
from polymodal.evaluation.plots import _save, plot_answers, plot_loss_curves  # noqa: E402
from polymodal.modalities import Preprocessing  # noqa: E402

REPORT_DIR = "report"


@dataclass
class Sample:
    """The first val rows that decode: raw values, model inputs and embeddings."""

    raw: dict[str, list]  # modality -> raw value per row (None when missing)
    inputs: dict[str, torch.Tensor]
    present: dict[str, np.ndarray]  # modality -> bool per row
    embeddings: dict[str, np.ndarray]  # modality -> [rows, dim], zeros where missing
    labels: np.ndarray


def _sample(model, prep: Preprocessing, dataset: str, manifest, rows: int) -> Sample:
    columns = read_columns(dataset, manifest, prep.modalities)
    tables, n = [], 0
    for table in iter_tables(dataset, "val", columns, 512, manifest):
        tables.append(table)
        n += table.num_rows
        if n >= rows:
            break
    table = pa.concat_tables(tables).slice(0, rows)
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    arrays, bad = decode_columns(cols, prep, num_labels=manifest.num_labels)
    batch = Batch.from_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    dropped = {i for i, _ in bad}
    kept = [i for i in range(table.num_rows) if i not in dropped]
    raw = {m: [cols.get(m, [None] * table.num_rows)[i] for i in kept] for m in prep.modalities}
    embeddings, present = {}, {}
    with torch.no_grad():
        for m in prep.modalities:
            x = batch.inputs[m]
            present[m] = (batch.present[m] > 0).numpy()
            out = [model.embed(m, x[i : i + 256]) for i in range(0, len(x), 256)]
            embeddings[m] = torch.cat(out).numpy() * present[m][:, None]
    return Sample(raw, batch.inputs, present, embeddings, batch.label.numpy())


def _emergent(metrics: dict[str, float], direction: str) -> bool:
    """No training row held both modalities of `direction` (train/paired/<a>-<b> is 0)."""
    pair = "-".join(sorted(direction.split("->")))
    return metrics.get(f"train/paired/{pair}", 1.0) == 0


def _datasets(cfg, first: str) -> str:
    given = cfg.data.sources
    if len(given) > 1:
        return "sources " + ", ".join(f"{s.named()} ({s.path}, weight {s.weight:g})" for s in given)
    return f"dataset {first}"


def _sources_sample(model, meta, rows: int) -> Sample:
    """`rows` val rows shared among the run's datasets (each source's first ones)."""
    cfg, prep = meta.run_config(), meta.prep
    if len(cfg.data.sources) > 1:
        sources = data_sources(cfg)
        share = max(rows // len(sources), 1)
        parts = [_sample(model, prep, s.path, s.manifest, share) for s in sources]
        return Sample(
            raw={m: [v for p in parts for v in p.raw[m]] for m in prep.modalities},
            inputs={m: torch.cat([p.inputs[m] for p in parts]) for m in prep.modalities},
            present={m: np.concatenate([p.present[m] for p in parts]) for m in prep.modalities},
            embeddings={
                m: np.concatenate([p.embeddings[m] for p in parts]) for m in prep.modalities
            },
            labels=np.concatenate([p.labels for p in parts]),
        )
    dataset = meta.dataset  # absolute, or s3://
    if is_webdataset_path(dataset):  # tars read in place: their manifest is made up
        manifest = dataset_manifest(cfg)
    else:
        manifest = read_manifest(dataset)
    return _sample(model, prep, dataset, manifest, rows)


def _metrics_table(metrics: dict[str, float]) -> str:
    pairs = sorted({k.split("/", 2)[2] for k in metrics if k.startswith("val/recall@")})
    ks = sorted({int(k.split("@")[1].split("/")[0]) for k in metrics if "val/recall@" in k})
    kinds = [("recall", "R")]  # instance hits, then class hits where the rows have labels
    if any(k.startswith("val/class_recall@") for k in metrics):
        kinds.append(("class_recall", "class R"))
    head = "".join(f"<th>{short}@{k}</th>" for _, short in kinds for k in ks)
    rows = [
        f"<tr><td>{html.escape(p.replace('->', ' → '))}"
        + (" <b>(emergent: never paired in training)</b>" if _emergent(metrics, p) else "")
        + "</td>"
        + "".join(
            f"<td>{metrics.get(f'val/{kind}@{k}/{p}', float('nan')):.3f}</td>"
            for kind, _ in kinds
            for k in ks
        )
        + "</tr>"
        for p in pairs
    ]
    table = f"<table><tr><th>query → corpus</th>{head}</tr>{''.join(rows)}</table>" if pairs else ""
    others = [
        f"<tr><td>{k}</td><td>{v:.4f}</td></tr>"
        for k, v in sorted(metrics.items())
        if k in ("val/accuracy", "val/answer_accuracy", "val/zero_shot_accuracy", "val/loss")
        or k.startswith("suite/")
    ]
    return table + (f"<table>{''.join(others)}</table>" if others else "")


def _projection(sample: Sample, label_names: list[str] | None, out: str) -> str | None:
    """PCA of the first modality's val embeddings to 2-D, coloured by label."""
    m = next((m for m in sample.embeddings if sample.present[m].sum() >= 3), None)
    if m is None:
        return None
    x = sample.embeddings[m][sample.present[m]]
    labels = sample.labels[sample.present[m]]
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    if (labels >= 0).any():
        for c in sorted(set(labels.tolist())):
            pts = xy[labels == c]
            name = label_names[c] if label_names and 0 <= c < len(label_names) else str(c)
            ax.scatter(pts[:, 0], pts[:, 1], s=8, label=name)
        ax.legend(fontsize=7, markerscale=2, loc="best")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=8)
    ax.set_title(f"val {m} embeddings, first two principal components")
    fig.tight_layout()
    return _save(fig, out)


def _image_gallery(sample: Sample, out: str, queries: int = 5, k: int = 5) -> str | None:
    """Text queries (distinct captions of val rows) → the k closest val images."""
    if not {"image", "text"} <= set(sample.embeddings):
        return None
    texts, picked, seen = sample.raw["text"], [], set()
    for i, t in enumerate(texts):  # distinct captions, of distinct classes when labelled
        key = int(sample.labels[i]) if sample.labels[i] >= 0 else t
        if t is not None and sample.present["text"][i] and key not in seen:
            picked.append(i)
            seen.add(key)
        if len(picked) == queries:
            break
    images = np.flatnonzero(sample.present["image"])
    if not picked or not len(images):
        return None
    scores = sample.embeddings["text"][picked] @ sample.embeddings["image"][images].T
    k = min(k, len(images))
    fig, axes = plt.subplots(len(picked), k, figsize=(1.6 * k, 1.7 * len(picked)), squeeze=False)
    for row, q in enumerate(picked):
        top = np.argsort(-scores[row])[:k]
        for col, j in enumerate(top):
            ax = axes[row][col]
            pixels = sample.inputs["image"][images[j]].permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{scores[row][j]:.2f}", fontsize=7)
        axes[row][0].set_ylabel(texts[q][:28], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, out)


def _pairs_table(sample: Sample, a: str, b: str = "text", rows: int = 5, k: int = 3) -> str:
    """For a few val rows with both: the true text and the k texts closest to its `a`."""
    if a == b or not {a, b} <= set(sample.embeddings):
        return ""
    both = np.flatnonzero(sample.present[a] & sample.present[b])[:rows]
    corpus = np.flatnonzero(sample.present[b])
    if not len(both):
        return ""
    scores = sample.embeddings[a][both] @ sample.embeddings[b][corpus].T
    lines = [f"<tr><th>{a} of row</th><th>its {b}</th><th>closest {b} (score)</th></tr>"]
    for r, i in enumerate(both):
        top = np.argsort(-scores[r])[:k]
        found = "<br>".join(
            ("<b>" if corpus[j] == i else "")
            + f"{html.escape(str(sample.raw[b][corpus[j]])[:80])} ({scores[r][j]:.2f})"
            + ("</b>" if corpus[j] == i else "")
            for j in top
        )
        truth = html.escape(str(sample.raw[b][i])[:80])
        lines.append(f"<tr><td>row {i}</td><td>{truth}</td><td>{found}</td></tr>")
    return f"<h3>{a} → {b}</h3><table>{''.join(lines)}</table>"


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
    "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}"
)


def write_report(run_dir: str, rows: int = 1000) -> str:
    """Write RUN_DIR/report/index.html and its PNGs (local or s3://); returns the page."""
    summary = json.loads(storage.read_bytes(storage.join(run_dir, "metrics.json")))
    model, meta = load_model(fetch_checkpoint(summary["checkpoint"]))
    cfg, prep = meta.run_config(), meta.prep
    out = storage.join(run_dir, REPORT_DIR)
    sample = _sources_sample(model, meta, rows)
    images = {
        "loss_curves.png": plot_loss_curves(meta.history, storage.join(out, "loss_curves.png")),
        "projection.png": _projection(
            sample, meta.label_names, storage.join(out, "projection.png")
        ),
        "gallery.png": _image_gallery(sample, storage.join(out, "gallery.png")),
    }
    captions = {
        "loss_curves.png": "Loss per term, train (each log window) and validation (each epoch)",
        "projection.png": "Validation embeddings, first two principal components",
        "gallery.png": "Text queries (val captions) → the five closest val images, with scores",
    }
    manifest = read_manifest(meta.dataset)
    if model.fusion is not None and "image" in model.fusion.inputs and "text" in prep.modalities:
        shown = answered_rows(model, meta.dataset, "val", prep, manifest, limit=12)
        images["answers.png"] = plot_answers(
            shown, meta.label_names or [], storage.join(out, "answers.png")
        )
        captions["answers.png"] = "Val questions: the model's answer (green: right) and the truth"
    # What `polymodal mine` chose, when the run trained on mined data: a few rows each.
    found = {key: mined_rows(meta.dataset, key) for key in mined(manifest)}
    for key, shown in found.items():
        name = f"mined-{key.replace('->', '-')}.png"
        images[name] = plot_mined_negatives(shown, key, storage.join(out, name))
        captions[name] = f"Mined {key} negatives of a few train rows: own (green), mined (red)"
    figures = "".join(
        f"<figure><img src='{name}' alt='{captions[name]}'><figcaption>{captions[name]}"
        "</figcaption></figure>"
        for name, path in images.items()
        if path
    )
    pairs = "".join(_pairs_table(sample, m) for m in prep.modalities if m not in ("image",))
    pairs += "".join(mined_table(shown, key) for key, shown in found.items())
    name = html.escape(cfg.train.name)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>polymodal run {name}</title>"
        f"<style>{STYLE}</style></head><body><h1>Run {name}</h1>"
        f"<p>checkpoint {html.escape(summary['checkpoint'])}, epoch {summary['epoch']}, "
        f"step {summary['step']}; {html.escape(_datasets(cfg, meta.dataset))} "
        f"({len(sample.labels)} val rows shown)</p>"
        f"<h2>Validation metrics</h2>{_metrics_table(summary)}"
        f"<h2>Figures</h2>{figures}<h2>Retrieval examples</h2>{pairs or '<p>none</p>'}"
        f"<h2>Config</h2><pre>{html.escape(yaml.safe_dump(meta.config, sort_keys=False))}"
        "</pre></body></html>"
    )
    page_uri = storage.join(out, "index.html")
    storage.write_bytes(page_uri, page.encode())
    return page_uri


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def screenshot(page: str, out: str, width: int = 1200, height: int = 1800) -> str:
    """A PNG of a local report page as headless Chromium renders it (Debian:
    apt-get install chromium-headless-shell)."""
    if "://" in page:
        raise ValueError(f"{page}: a screenshot needs a local report")
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        raise FileNotFoundError(
            f"no headless Chromium found ({', '.join(BROWSERS)}); "
            "install one, e.g. sudo apt-get install chromium-headless-shell"
        )
    out = os.path.abspath(out)
    cmd = [exe, "--headless", "--disable-gpu", "--hide-scrollbars"]
    if os.geteuid() == 0:  # Chromium refuses to run its sandbox as root
        cmd.append("--no-sandbox")
    cmd += [f"--screenshot={out}", f"--window-size={width},{height}", Path(page).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not os.path.isfile(out):
        raise RuntimeError(f"{exe} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out
