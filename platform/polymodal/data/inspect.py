"""`polymodal data inspect`: schema, row counts per split and a few rows, as text."""

from __future__ import annotations

from pathlib import Path

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
