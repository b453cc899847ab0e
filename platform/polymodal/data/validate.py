"""`polymodal data validate`: the manifest against its shards (files, row counts, schema,
checksums), then every row decoded in parallel with Ray Data, reported by reason."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from polymodal import storage
from polymodal.data.decode import decode_columns
from polymodal.data.format import manifest_schema, read_manifest, schema_difference, shard_paths
from polymodal.modalities import Preprocessing

EXAMPLES = 10


@dataclass
class ValidationReport:
    dataset: str
    problems: list[str] = field(default_factory=list)  # shard-level: missing, rows, schema
    rows_checked: int = 0
    bad_rows: Counter = field(default_factory=Counter)  # reason -> rows
    examples: list[str] = field(default_factory=list)  # "id: reason"

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_rows

    def format(self) -> str:
        lines = [f"{self.dataset}: {self.rows_checked} rows decoded"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  bad rows, {reason}: {n}" for reason, n in self.bad_rows.most_common()]
        lines += [f"    e.g. {e}" for e in self.examples]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def check_shards(path: str, report: ValidationReport) -> list[str]:
    """Shard-level checks; returns the shards that can be read for the row check."""
    manifest = read_manifest(path)
    expected = manifest_schema(manifest)
    readable = []
    for split, info in manifest.splits.items():
        for shard, uri in zip(info["shards"], shard_paths(path, manifest, split)):
            name = shard["path"]
            if not storage.is_file(uri):
                report.problems.append(f"{name}: missing")
                continue
            data = storage.read_bytes(uri)  # read once: for the checksum and the footer
            if "sha256" in shard and hashlib.sha256(data).hexdigest() != shard["sha256"]:
                report.problems.append(f"{name}: checksum differs from the manifest")
            try:
                file = pq.ParquetFile(pa.BufferReader(data))
            except Exception as exc:  # pyarrow raises several types for a damaged file
                report.problems.append(f"{name}: not a readable Parquet file ({exc})")
                continue
            if file.metadata.num_rows != shard["rows"]:
                report.problems.append(
                    f"{name}: {file.metadata.num_rows} rows, manifest says {shard['rows']}"
                )
            difference = schema_difference(file.schema_arrow, expected)
            if difference:
                report.problems.append(f"{name}: {difference}")
                continue
            readable.append(uri)
    return readable


def check_batch(table: pa.Table, modalities: list[str], num_labels: int | None) -> pa.Table:
    """One summary row per batch: rows checked and the bad ones' ids and reasons, found by
    the same decoding that training uses."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    _, bad = decode_columns(columns, Preprocessing(modalities), num_labels=num_labels)
    return pa.table(
        {
            "checked": [table.num_rows],
            "ids": [[columns["id"][i] for i, _ in bad]],
            "reasons": [[reason for _, reason in bad]],
        }
    )


def validate_dataset(path: str) -> ValidationReport:
    from polymodal.data.pipeline import read_shards

    report = ValidationReport(str(path))
    manifest = read_manifest(path)
    shards = check_shards(path, report)
    if not shards:
        return report
    modalities = list(manifest.modalities)
    ds = read_shards(shards).map_batches(
        # Ray types fn as taking the batch alone, though fn_kwargs (documented) gives the rest.
        check_batch,  # type: ignore[arg-type]
        batch_format="pyarrow",
        fn_kwargs={"modalities": modalities, "num_labels": manifest.num_labels},
    )
    for summary in ds.iter_rows():
        report.rows_checked += summary["checked"]
        for row_id, reason in zip(summary["ids"], summary["reasons"]):
            report.bad_rows[reason] += 1
            if len(report.examples) < EXAMPLES:
                report.examples.append(f"{row_id}: {reason}")
    return report
