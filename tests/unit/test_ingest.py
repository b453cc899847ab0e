import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from polymodal.data.format import DatasetError, read_manifest, shard_paths, split_of
from polymodal.data.ingest import IngestError, ingest
from polymodal.data.inspect import inspect_dataset


def _write_png(path, value=0):
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    for i in range(6):
        _write_png(root / "img" / f"{i}.png", i * 40)
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [
        ("a", "img/0.png", "a cat", "cat"),
        ("b", "img/1.png", "a dog", "dog"),
        ("c", "img/missing.png", "a cow", "cat"),  # line 4: missing file
        ("d", "img/broken.png", "a bird", "dog"),  # line 5: unreadable image
        ("e", "img/2.png", "一只猫", "cat"),
        ("f", "img/3.png", "", "dog"),  # no text: image only
        ("g", "img/4.png", "a fish", "cat"),
        ("h", "img/5.png", "a pig", "dog"),
    ]
    lines = ["id,image,text,label"] + [",".join(r) for r in rows]
    (root / "index.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_digits_round_trip(tmp_path):
    out = tmp_path / "digits"
    report = ingest("builtin:digits", out, progress=False)
    manifest = read_manifest(out)
    assert report.rows_written == 1797
    assert manifest.rows("train") + manifest.rows("val") == 1797
    assert 0.05 < manifest.rows("val") / 1797 < 0.15
    assert manifest.label_names[3] == "three"
    assert manifest.modalities == {"image": {"encoding": "png"}, "text": {"encoding": "utf-8"}}
    table = pq.read_table(shard_paths(out, manifest, "val")[0])
    assert table.schema.names == ["id", "image", "text", "label"]
    row = table.slice(0, 1).to_pylist()[0]
    assert Image.open(io.BytesIO(row["image"])).size == (8, 8)
    assert manifest.label_names[row["label"]] in row["text"]
    # The split is a function of the id: the same id is always in the same split.
    for rid in table.column("id").to_pylist()[:20]:
        assert split_of(rid, 0.1) == "val"
    again = tmp_path / "again"
    ingest("builtin:digits", again, progress=False)
    assert read_manifest(again).splits == manifest.splits


def test_folder_index_skips_bad_rows_with_reasons(folder, tmp_path):
    out = tmp_path / "ds"
    report = ingest(str(folder), out, val_fraction=0.0, progress=False)
    assert report.rows_written == 6
    assert report.rejected == {"missing file": 1, "unreadable image": 1}
    assert any("row 4" in e and "missing file 'img/missing.png'" in e for e in report.examples)
    assert any("row 5" in e and "unreadable image" in e for e in report.examples)
    manifest = read_manifest(out)
    assert manifest.label_names == ["cat", "dog"]
    assert manifest.rejected == {"missing file": 1, "unreadable image": 1}
    rows = pq.read_table(shard_paths(out, manifest, "train")[0]).to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert by_id["e"]["text"] == "一只猫"
    assert by_id["f"]["text"] is None  # a missing modality is null, never a placeholder
    assert by_id["b"]["label"] == 1
    assert manifest.extra["image_channels"] == 1  # every image is grey
    # One colour image makes the dataset RGB: training then reads 3 channels.
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(folder / "img" / "4.png")
    ingest(str(folder), tmp_path / "rgb", val_fraction=0.0, progress=False)
    assert read_manifest(tmp_path / "rgb").extra["image_channels"] == 3


def test_strict_fails_and_leaves_nothing(folder, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(IngestError, match=r"row 4 \(id c\): missing file"):
        ingest(str(folder), out, strict=True, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [folder]  # no staging directory left behind


def test_jsonl_bad_labels_reported(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    recs = [{"text": "one", "label": 1}, {"text": "two", "label": -2}, {"text": "x", "label": 2}]
    (root / "index.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{oops\n")
    report = ingest(str(root), tmp_path / "ds", progress=False)
    assert report.rows_written == 2
    assert report.rejected == {"bad label": 1, "invalid JSON": 1}
    assert any("row 2" in e and "negative" in e for e in report.examples)
    assert any("row 4" in e for e in report.examples)


def test_existing_dataset_is_kept_unless_overwrite(folder, tmp_path):
    out = tmp_path / "ds"
    ingest(str(folder), out, progress=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(DatasetError, match="already exists"):
        ingest("builtin:digits", out, progress=False)
    # A failing overwrite keeps the old dataset intact.
    with pytest.raises(IngestError):
        ingest(str(folder), out, strict=True, overwrite=True, progress=False)
    assert (out / "manifest.json").read_text() == before
    ingest("builtin:digits", out, overwrite=True, progress=False, limit=50)
    assert read_manifest(out).source == "builtin:digits"


def test_unfinished_dataset_is_not_readable(tmp_path):
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="ingest did not finish"):
        read_manifest(tmp_path / "half")


def test_inspect_prints_schema_counts_and_rows(digits_dataset):
    text = inspect_dataset(digits_dataset, rows=2)
    assert "split train:" in text and "split val:" in text
    assert "image: binary" in text and "label: int64" in text
    assert "(three)" in text or "label=" in text


def test_fashion_mnist_source_reads_the_debian_files(tmp_path):
    out = tmp_path / "fashion"
    report = ingest("builtin:fashion-mnist", out, limit=30, progress=False)
    manifest = read_manifest(out)
    assert report.rows_written == 60
    assert manifest.rows("train") == 30 and manifest.rows("val") == 30  # the official split
    row = pq.read_table(shard_paths(out, manifest, "train")[0]).slice(0, 1).to_pylist()[0]
    assert Image.open(io.BytesIO(row["image"])).size == (28, 28)
    assert manifest.label_names[row["label"]] in row["text"]


def test_emoji_source_renders_named_colour_pictures_split_by_family(tmp_path):
    out = tmp_path / "emoji"
    ingest("builtin:emoji", out, limit=400, val_fraction=0.3, progress=False)
    manifest = read_manifest(out)
    assert manifest.extra["image_channels"] == 3 and manifest.label_names is None
    rows = {
        split: [r for p in shard_paths(out, manifest, split) for r in pq.read_table(p).to_pylist()]
        for split in ("train", "val")
    }
    by_id = {r["id"]: r for split_rows in rows.values() for r in split_rows}
    assert by_id["1f947"]["text"] == "1st place medal"
    pixels = np.asarray(Image.open(io.BytesIO(by_id["1f947"]["image"])))
    assert pixels.shape == (72, 72, 3) and pixels.std() > 20  # a picture, in colour
    assert (np.abs(pixels[..., 0].astype(int) - pixels[..., 2]) > 60).any()
    # Every skin tone of an emoji lands in the split of the emoji: 👋 and 👋🏿 stay together.
    tones = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}
    family = {
        s: {"-".join(p for p in r["id"].split("-") if p not in tones) for r in rows[s]}
        for s in rows
    }
    assert family["train"] and family["val"] and not family["train"] & family["val"]
    assert any(tone in r["id"] for r in by_id.values() for tone in tones)


def test_corrupt_files_never_reach_the_dataset(tmp_path):
    """Truncated, garbage and decompression-bomb images are refused with their row; every
    image the dataset holds decodes."""
    root = tmp_path / "src"
    root.mkdir()
    _write_png(root / "good.png", 100)
    whole = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(
        whole, format="PNG"
    )
    (root / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (root / "noise.png").write_bytes(bytes(range(256)) * 4)
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # 400 MP in a few hundred KB
    (root / "bomb.png").write_bytes(bomb.getvalue())
    names = ["good", "cut", "noise", "bomb"]
    lines = ["id,image,text"] + [f"{n},{n}.png,{n} picture" for n in names]
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    report = ingest(str(root), tmp_path / "ds", val_fraction=0.0, progress=False)
    assert report.rows_written == 1
    assert report.rejected == {"unreadable image": 2, "image too large": 1}
    assert any("row 3 (id cut): unreadable image" in e for e in report.examples)
    assert any("row 5 (id bomb): image too large" in e for e in report.examples)
    manifest = read_manifest(tmp_path / "ds")
    rows = pq.read_table(shard_paths(tmp_path / "ds", manifest, "train")[0]).to_pylist()
    assert [r["id"] for r in rows] == ["good"]
    Image.open(io.BytesIO(rows[0]["image"])).load()
