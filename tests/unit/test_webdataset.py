"""Webdataset tars and Parquet tables as sources, on real Fashion-MNIST images: brace
patterns, samples grouped by key, bad samples rejected with their reason at ingest."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polymodal.data.format import DatasetError, read_manifest, shard_paths
from polymodal.data.ingest import ingest
from polymodal.data.sources.builtin import FASHION_LABELS, fashion_mnist
from polymodal.data.tars import expand, iter_samples, webdataset_manifest
from tests.conftest import write_tars


def test_brace_patterns_expand():
    assert expand("s3://b/{000..002}.tar") == ["s3://b/000.tar", "s3://b/001.tar", "s3://b/002.tar"]
    assert expand("a/{x,y}/{8..10}.tar") == [
        "a/x/8.tar",
        "a/x/9.tar",
        "a/x/10.tar",
        "a/y/8.tar",
        "a/y/9.tar",
        "a/y/10.tar",
    ]
    assert expand("a.tar::b.tar") == ["a.tar", "b.tar"]
    with pytest.raises(DatasetError, match="bad range"):
        expand("{5..1}.tar")


def test_tars_ingest_with_bad_samples_named(tmp_path):
    rows = list(fashion_mnist(limit=30).rows)[:30]
    damaged = {3: {"png": b"not a png"}, 7: {"cls": b"shoe"}}
    write_tars(tmp_path / "wds", rows, per_tar=10, damaged=damaged)
    samples = list(iter_samples(str(tmp_path / "wds" / "00000.tar")))
    assert [k for k, _ in samples][:2] == ["000000000", "000000001"]
    assert set(samples[0][1]) == {"png", "txt", "cls", "json"}

    # --limit reads in this process (no Ray): rows of the first tars
    report = ingest(
        str(tmp_path / "wds" / "{00000..00002}.tar"), tmp_path / "out", limit=20, progress=False
    )
    assert report.rows_written == 18 and report.parallel_tasks == 0
    assert report.rejected == {"unreadable image": 1, "bad label": 1}
    assert any("00000.tar" in e and "row 4 (id 000000003)" in e for e in report.examples)
    manifest = read_manifest(tmp_path / "out")
    assert manifest.label_names == [str(i) for i in range(10)]
    first = pq.read_table(shard_paths(tmp_path / "out", manifest, "train")[0]).to_pylist()[0]
    original = next(r for r in rows if r.values["image"] == first["image"])
    assert first["text"] == original.values["text"] and first["label"] == original.label


def test_webdataset_read_in_place(tmp_path):
    rows = list(fashion_mnist(limit=25).rows)[:25]
    write_tars(tmp_path, rows[:20], per_tar=10)
    (tmp_path / "val").mkdir()
    write_tars(tmp_path / "val", rows[20:], per_tar=10)
    names = tuple(FASHION_LABELS)
    m = webdataset_manifest(
        str(tmp_path / "{00000..00001}.tar"), str(tmp_path / "val/00000.tar"), names
    )
    assert m.rows("train") == 20 and m.rows("val") == 5
    assert set(m.modalities) == {"image", "text"} and m.label_names == list(names)
    with pytest.raises(DatasetError, match="00002.tar: webdataset shard not found"):
        webdataset_manifest(str(tmp_path / "{00000..00002}.tar"), str(tmp_path / "val/00000.tar"))


def test_parquet_table_with_column_mapping(tmp_path):
    rows = list(fashion_mnist(limit=12).rows)[:12]
    names = ["bag", "coat", "dress"]
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(12)],
            "jpg_bytes": [r.values["image"] for r in rows],
            "caption": [r.values["text"] for r in rows],
            "cls": [names[i % 3] for i in range(12)],
        }
    )
    pq.write_table(table, tmp_path / "table.parquet")
    report = ingest(
        str(tmp_path / "table.parquet"),
        tmp_path / "out",
        progress=False,
        mapping=["image=jpg_bytes", "text=caption", "label=cls", "id=key"],
    )
    manifest = read_manifest(tmp_path / "out")
    assert report.rows_written == 12 and manifest.label_names == names
    written = {
        r["id"]: r
        for s in manifest.splits
        for r in pq.read_table(shard_paths(tmp_path / "out", manifest, s)).to_pylist()
    }
    assert (
        written["k4"]["label"] == names.index("coat")
        and written["k4"]["text"] == rows[4].values["text"]
    )
    with pytest.raises(DatasetError, match="no column 'jpg' for image"):
        ingest(str(tmp_path / "table.parquet"), tmp_path / "o2", mapping=["image=jpg"])
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        ingest(str(tmp_path / "table.parquet"), tmp_path / "o3", mapping=["picture=jpg"])
