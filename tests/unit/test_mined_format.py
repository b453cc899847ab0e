"""Mined negatives on disk: a dataset whose rows carry their negatives by value decodes into
negatives/<direction> [B, K, ...] and flags [B, K], missing and broken negatives absent; the
rank window and filters of `polymodal mine`."""

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from ray.data.block import BlockAccessor

from polymodal.data.decode import decode_columns
from polymodal.data.format import (
    DatasetWriter,
    negatives_column,
    negatives_sizes,
    read_columns,
    read_manifest,
    row_groups,
)
from polymodal.data.pipeline import piece_reader, pieces
from polymodal.modalities import Preprocessing

KEY = "text->image"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _mined_dataset(tmp_path):
    out = tmp_path / "mined"
    writer = DatasetWriter(
        out, ["image", "text"], {"image": "png", "text": "utf-8"}, ["a", "b"], True,
        negatives={KEY: "image"},
    )  # fmt: skip
    column = negatives_column(KEY)
    rows = [
        [_png(10), _png(20), _png(30)],  # all three
        [_png(40)],  # fewer than K: padded absent
        [_png(50), b"not a png", None],  # broken and missing: absent, the row kept
        None,  # none at all
    ]
    for i, negatives in enumerate(rows):
        row = {"id": f"r{i}", "image": _png(i), "text": f"row {i}", "label": i % 2}
        writer.add("train", row | {column: negatives})
    writer.add("val", {"id": "v0", "image": _png(1), "text": "val", "label": 0, column: None})
    extra = {"negatives": {KEY: {"anchor": "text", "modality": "image", "num_negatives": 3}}}
    writer.finish("test", extra, {})
    return out


def test_mined_dataset_decodes_to_negatives_and_flags(tmp_path):
    out = _mined_dataset(tmp_path)
    manifest = read_manifest(out)
    row_groups(out, manifest, "train")  # the shards' schema agrees with the manifest's
    prep = Preprocessing(["image", "text"], image_size=16)
    columns = read_columns(out, manifest, prep.modalities)
    assert negatives_column(KEY) in columns
    assert negatives_column(KEY) not in read_columns(out, manifest, ["image"])
    table = pq.read_table(out / manifest.splits["train"]["shards"][0]["path"], columns=columns)
    raw = {name: table.column(name).to_pylist() for name in table.column_names}
    sizes = negatives_sizes(manifest, prep.modalities)
    assert sizes == {KEY: 3}
    arrays, bad = decode_columns(raw, prep, negatives=sizes)
    assert bad == []
    negatives, present = arrays[f"negatives/{KEY}"], arrays[f"negatives_present/{KEY}"]
    assert negatives.shape == (4, 3, *arrays["image"].shape[1:])
    assert negatives.dtype == arrays["image"].dtype
    expected = [[1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]]
    np.testing.assert_array_equal(present, np.array(expected, dtype=np.float32))
    assert not negatives[present == 0].any()  # absent negatives are zeros
    # Decoded exactly as the modality's rows: the row whose image is _png(10)'s value…
    row = decode_columns({"image": [_png(10)]}, Preprocessing(["image"], image_size=16))[0]
    np.testing.assert_array_equal(negatives[0, 0], row["image"][0])


def test_piece_reader_reads_negatives_and_val_without_them(tmp_path):
    out = _mined_dataset(tmp_path)
    prep = Preprocessing(["image", "text"], image_size=16)
    batches = {}
    for split in ("train", "val"):
        reader = piece_reader(str(out), split, prep)
        blocks = [b for item in pieces(str(out), read_manifest(out), split) for b in reader(item)]
        batches[split] = BlockAccessor.for_block(blocks[0]).to_batch_format("numpy")
    assert batches["train"][f"negatives_present/{KEY}"].shape == (4, 3)
    assert batches["train"][f"negatives_present/{KEY}"].sum() == 5
    assert batches["train"][f"negatives/{KEY}"].shape[:2] == (4, 3)
    # val is never read with negatives (its loss is in-batch): no zeros decoded for it
    assert not [k for k in batches["val"] if k.startswith("negatives")]


def test_pick_window_skips_own_and_same_content_then_filters():
    from polymodal.inference.mine import MineSettings, _pick

    # candidates by rank: 0 is the row itself, 1 has its content, then 2..6
    rows = np.array([0, 1, 2, 3, 4, 5, 6])
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    hashes = np.array([7, 7, 1, 2, 3, 4, 5])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])

    def pick(pos=1.0, **kw):
        return _pick(rows, scores, 0, hashes, labels, MineSettings("text", "image", **kw), pos)

    assert pick(num_negatives=2) == [2, 3]  # ranks 0, 1 once own and same-content are out
    assert pick(num_negatives=2, range_min=1) == [3, 4]
    assert pick(num_negatives=5, range_min=1, range_max=3) == [3, 4]  # the window caps it
    assert pick(num_negatives=2, max_score=0.75) == [4, 5]
    assert pick(num_negatives=2, margin=0.25, pos=1.0) == [4, 5]  # < 0.75
    assert pick(num_negatives=2, relative_margin=0.25, pos=0.9) == [5, 6]  # < 0.675
    assert pick(num_negatives=2, exclude_same_label=True) == [3, 4]
    assert pick(num_negatives=2, margin=0.1, pos=float("nan")) == []  # no positive to compare


def test_mined_negatives_picture_shows_rows_with_negatives(tmp_path):
    from polymodal.evaluation.mined_figure import mined_rows, mined_table, plot_mined_negatives

    out = _mined_dataset(tmp_path)
    found = mined_rows(str(out), KEY, rows=5)
    assert [r["id"] for r in found] == ["r0", "r1", "r2"]  # r3 has none
    png = plot_mined_negatives(found, KEY, str(tmp_path / "mined.png"))
    picture = Image.open(png)
    assert picture.format == "PNG" and picture.size[0] > 4 * 100  # own + 3 negatives wide
    assert mined_table(found, KEY) == ""  # image negatives: a picture, not a table
