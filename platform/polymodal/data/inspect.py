"""`polymodal data inspect`: a dataset's schema, row counts per split and a few rows; or a
config's datasets (data.sources): each one's rows, modalities and share of an epoch."""

from __future__ import annotations

from pathlib import Path

from polymodal.config import Config
from polymodal.data.dataset import data_sources
from polymodal.data.format import open_shard, read_manifest, shard_paths


def _short(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def inspect_dataset(path: str | Path, rows: int = 5) -> str:
    manifest = read_manifest(path)
    lines = [f"dataset: {path}", f"source: {manifest.source}"]
    mods = ", ".join(f"{m} ({spec['encoding']})" for m, spec in manifest.modalities.items())
    lines.append(f"modalities: {mods}")
    if manifest.label_names:
        lines.append(f"labels ({len(manifest.label_names)}): {', '.join(manifest.label_names)}")
    for split, info in manifest.splits.items():
        lines.append(f"split {split}: {info['rows']} rows in {len(info['shards'])} shards")
    if manifest.rejected:
        lines.append(f"rejected at ingest: {manifest.rejected}")
    first = next(iter(manifest.splits))
    file = open_shard(shard_paths(path, manifest, first)[0])
    lines.append("schema:")
    lines += [f"  {f.name}: {f.type}" for f in file.schema_arrow]
    lines.append(f"first {rows} rows of {first}:")
    table = file.read_row_group(0).slice(0, rows).to_pylist()
    for rec in table:
        if manifest.label_names and rec.get("label") is not None:
            rec["label"] = f"{rec['label']} ({manifest.label_names[rec['label']]})"
        lines.append("  " + "  ".join(f"{k}={_short(v)}" for k, v in rec.items()))
    return "\n".join(lines)


def inspect_sources(cfg: Config) -> str:
    """The datasets a config trains on: per source, its rows per split, modalities, labels,
    weight and the share of an epoch's samples that weight gives it."""
    sources = data_sources(cfg)
    epoch = {s.name: s.weight * s.manifest.rows("train") for s in sources}
    total = sum(epoch.values()) or 1
    lines = [
        f"{len(sources)} source{'s' if len(sources) > 1 else ''}, {round(total)} rows an epoch:"
    ]
    for s in sources:
        splits = ", ".join(f"{k} {s.manifest.rows(k)}" for k in s.manifest.splits)
        labels = f"{len(s.manifest.label_names)} labels" if s.manifest.label_names else "no labels"
        share = f"{epoch[s.name] / total:.0%} of an epoch" if s.weight else "validation only"
        lines.append(
            f"  {s.name}: {s.path}\n    {', '.join(s.manifest.modalities)}; {labels}; rows: "
            f"{splits}; weight {s.weight:g} = {share}"
        )
    return "\n".join(lines)
