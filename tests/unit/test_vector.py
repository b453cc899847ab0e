"""The vector modality: decoding, standardisation statistics (streamed, stored in the
checkpoint, round trip), Parquet ingest of a list column, and the MLP encoder/decoder."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_digits

from polymodal.batch import Batch
from polymodal.checkpoint import RunMeta, load_model, save_checkpoint
from polymodal.config import load_config
from polymodal.data.dataset import preprocessing_for
from polymodal.data.decode import decode_columns
from polymodal.data.format import DatasetError, read_manifest
from polymodal.data.ingest import ingest
from polymodal.modalities.base import DecodeError
from polymodal.modalities.vector import decode_vector, vector_stats
from polymodal.models.build import build_model
from polymodal.objectives.joint import joint_loss


def test_decode_standardises_and_refuses_bad_vectors():
    mean, std = [1.0, -2.0, 0.0], [2.0, 0.5, 1.0]
    x = np.array([3.0, -1.0, 7.0])
    z = decode_vector(x.tolist(), mean, std)
    assert z.dtype == np.float32 and np.allclose(z, [1.0, 2.0, 7.0])
    assert np.allclose(z * np.array(std) + np.array(mean), x)  # the round trip
    for value, reason, detail in (
        ([1.0, 2.0], "bad vector", "expected (3,)"),
        ([1.0, float("nan"), 3.0], "bad vector", "1 values are NaN or inf"),
        ([1.0, float("inf"), 3.0], "bad vector", "NaN or inf"),
        (["a", "b", "c"], "wrong type", "not numbers"),
    ):
        with pytest.raises(DecodeError) as err:
            decode_vector(value, mean, std)
        assert err.value.reason == reason and detail in str(err.value)


def test_stats_stream_over_chunks_and_skip_nulls_and_non_finite_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 3, (100, 4)), rng.normal(5, 3, (50, 4))
    b[:, 3] = 2.0  # constant in b only: not constant overall
    type_ = pa.list_(pa.float32())
    first = pa.array([*a.tolist(), None], type=type_)
    second = pa.chunked_array(
        [pa.array(b.tolist(), type=type_), pa.array([[np.nan, 1, 2, 3]], type=type_)]
    )
    mean, std = vector_stats([first, second])
    both = np.concatenate([a, b]).astype(np.float32).astype(np.float64)
    assert np.allclose(mean, both.mean(0), atol=1e-5)
    assert np.allclose(std, both.std(0), atol=1e-5)
    _, constant_std = vector_stats([pa.array([[1.0, 4.0], [1.0, 6.0]], type=type_)])
    assert constant_std == [1.0, 1.0]  # a constant feature is left unscaled
    with pytest.raises(DecodeError, match="no finite vector"):
        vector_stats([pa.array([None], type=type_)])


@pytest.fixture
def digit_vectors(tmp_path):
    """scikit-learn's digits as a table: 64 pixel intensities as features, a caption, a
    class name; ingested with a column mapping."""
    d = load_digits()
    names = [str(n) for n in d.target]
    table = pa.table(
        {
            "pixels": pa.array(d.data.tolist(), type=pa.list_(pa.float64())),
            "caption": [f"the digit {n}" for n in names],
            "cls": names,
            "key": [f"digit-{i}" for i in range(len(names))],
        }
    )
    pq.write_table(table, tmp_path / "digits.parquet")
    out = tmp_path / "dataset"
    ingest(
        str(tmp_path / "digits.parquet"),
        out,
        mapping=["vector=pixels", "text=caption", "label=cls", "id=key"],
        progress=False,
    )
    return out, d.data


def test_parquet_vectors_ingest_and_standardise_from_the_train_split(digit_vectors, tmp_path):
    out, pixels = digit_vectors
    manifest = read_manifest(out)
    assert manifest.modalities["vector"]["encoding"] == "float32"
    cfg = load_config(None, [f"data.path={out}", "model.modalities=[vector,text]"])
    prep = preprocessing_for(cfg, manifest)
    assert len(prep.vector_mean) == 64 == len(prep.vector_std)
    assert max(prep.vector_std) > 1 and prep.vector_std[0] == 1.0  # pixel (0, 0): always blank
    # the train split's standardised features have mean 0 and std 1 (or 0 where constant)
    train = pq.read_table(out / "train").to_pydict()
    arrays, bad = decode_columns({"vector": train["vector"], "text": train["text"]}, prep)
    assert bad == [] and arrays["vector"].shape == (manifest.rows("train"), 64)
    assert np.allclose(arrays["vector"].mean(0), 0, atol=1e-4)
    spread = arrays["vector"].std(0)
    assert np.all(np.isclose(spread, 1, atol=1e-3) | (spread == 0))
    assert abs(np.mean(prep.vector_mean) - pixels.mean()) < 0.5  # ~ the whole table's mean
    # a row whose vector has a NaN (or the wrong length) is dropped as a bad row, not decoded
    damaged = [train["vector"][0], [float("nan")] * 64, [1.0] * 63]
    arrays, bad = decode_columns({"vector": damaged, "text": ["a", "b", "c"]}, prep)
    assert len(arrays["vector"]) == 1 and bad == [(1, "bad vector"), (2, "bad vector")]
    # Validation hashes every value to count identical content as a hit: vectors too.
    same = [train["vector"][0], list(train["vector"][0]), train["vector"][1]]
    arrays, _ = decode_columns({"vector": same, "text": ["a", "a", "b"]}, prep, with_hashes=True)
    hashes = arrays["vector_hash"]
    assert hashes[0] == hashes[1] != hashes[2]


def test_csv_feature_columns_ingest_as_one_vector(tmp_path):
    d = load_digits()
    header = ",".join([*(f"p{i}" for i in range(64)), "caption", "cls"])
    lines = [header]
    for i, (row, n) in enumerate(zip(d.data[:200], d.target[:200])):
        cells = [str(int(v)) for v in row]
        if i == 5:
            cells[3] = ""  # one missing cell: a bad vector, caught when decoding
        if i == 6:
            cells = [""] * 64  # no features at all: the row has no vector
        lines.append(",".join([*cells, f"the digit {n}", str(n)]))
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "dataset"
    columns = ",".join(f"p{i}" for i in range(64))
    ingest(
        str(tmp_path / "digits.csv"),
        out,
        mapping=[f"vector={columns}", "text=caption", "label=cls"],
        progress=False,
    )
    manifest = read_manifest(out)
    assert manifest.modalities["vector"]["encoding"] == "float32"
    assert manifest.rows("train") + manifest.rows("val") == 200
    rows = [r for split in ("train", "val") for r in pq.read_table(out / split).to_pylist()]
    by_id = {r["id"].rsplit("#", 1)[1]: r for r in rows}  # ids are FILE#ROW_NUMBER
    assert np.allclose(by_id["1"]["vector"], d.data[0])
    assert np.isnan(by_id["6"]["vector"][3]) and by_id["7"]["vector"] is None
    with pytest.raises(DatasetError, match="column 'caption' is string, not a number"):
        ingest(str(tmp_path / "digits.csv"), tmp_path / "o2", mapping=["vector=p0,caption"])
    with pytest.raises(ValueError, match="only vector takes several columns"):
        ingest(str(tmp_path / "digits.csv"), tmp_path / "o3", mapping=["text=p0,p1"])


def test_vector_text_model_trains_and_keeps_its_statistics(digit_vectors, tmp_path):
    out, _ = digit_vectors
    cfg = load_config(
        None,
        [f"data.path={out}", "model.modalities=[vector,text]"]
        + ["objective.weights.reconstruction=1", "model.vector.width=32"],
    )
    prep = preprocessing_for(cfg, read_manifest(out))
    model = build_model(cfg, prep)
    batch = Batch(
        inputs={
            "vector": torch.randn(4, 64),
            "text": torch.randint(1, 257, (4, cfg.data.text_max_len)),
        },
        present={"vector": torch.tensor([1.0, 1.0, 1.0, 0.0]), "text": torch.ones(4)},
        label=torch.full((4,), -1),
    )
    out_ = model(batch)
    assert out_.embeddings["vector"].shape == (4, cfg.model.embed_dim)
    assert out_.reconstructions["vector"].shape == (4, 64)
    loss, logs = joint_loss(out_, batch, cfg)
    loss.backward()
    assert torch.isfinite(loss) and "reconstruction/vector" in logs
    meta = RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict())
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded, saved = load_model(tmp_path / "ckpt")
    assert saved.prep.vector_mean == prep.vector_mean
    assert saved.prep.vector_std == prep.vector_std
    with torch.no_grad():
        model.eval()
        same = loaded.embed("vector", batch.inputs["vector"])
        assert torch.allclose(same, model.embed("vector", batch.inputs["vector"]), atol=1e-6)
