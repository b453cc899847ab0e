"""`polymodal data validate` on real digits: a good dataset passes; damaged shards and bad
rows are found, named and counted, and the command exits non-zero."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polymodal.cli import main
from polymodal.data.validate import validate_dataset
from tests.integration.conftest import bomb_png, copy_dataset

pytestmark = pytest.mark.integration


def test_good_dataset_passes(ray_cluster, digits_dataset, capsys):
    assert main(["data", "validate", str(digits_dataset)]) == 0
    out = capsys.readouterr().out
    assert "1797 rows decoded" in out and out.strip().endswith("OK")


def test_damage_is_found_and_named(ray_cluster, digits_dataset, tmp_path):
    data = tmp_path / "digits"
    manifest, first = copy_dataset(digits_dataset, data)
    shard = first["train"]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["image"] = b"\x89PNG not really"
    rows[1]["text"] = "   "
    rows[2]["image"] = bomb_png()
    rows[3]["label"] = 42
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    first["val"].unlink()

    report = validate_dataset(str(data))
    assert not report.ok
    assert any("checksum" in p and "train/part-00000" in p for p in report.problems)
    assert any("val/part-00000.parquet: missing" in p for p in report.problems)
    assert report.bad_rows == {
        "unreadable image": 1,
        "empty text": 1,
        "image too large": 1,
        "label out of range": 1,
    }
    assert report.rows_checked == manifest["splits"]["train"]["rows"]
    assert any(e.startswith(f"{rows[0]['id']}:") for e in report.examples)
    assert main(["data", "validate", str(data)]) == 1
