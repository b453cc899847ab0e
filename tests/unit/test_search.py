"""Exact search against brute force (shards, chunk boundaries, k past a shard and past the
corpus, ties), the index's write/read round trip and its errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polymodal.retrieval.index import INDEX_FILE, IndexFileError, IndexWriter, open_index
from polymodal.retrieval.search import search, search_rows


def _write(out, vectors, labels=None, shard_rows=37, ids=None):
    ids = ids or [f"row-{i}" for i in range(len(vectors))]
    writer = IndexWriter(
        str(out), model="m", modality="image", dim=vectors.shape[1], shard_rows=shard_rows
    )
    # in uneven pieces, as Ray Data blocks arrive
    for lo, hi in [(0, 5), (5, 60), (60, len(vectors))]:
        writer.add(ids[lo:hi], vectors[lo:hi], None if labels is None else labels[lo:hi])
    return writer.finish()


def _brute_force(vectors, queries, k):
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ v.T.astype(np.float64)
    order = np.stack([np.lexsort((np.arange(len(v)), -row)) for row in scores])[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32) * rng.uniform(0.1, 5, (200, 1))
    out = tmp_path_factory.mktemp("index") / "idx"
    labels = rng.integers(0, 3, 200)
    meta = _write(out, vectors, labels=labels)
    return vectors, labels, open_index(out), meta


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 37, 50])
@pytest.mark.parametrize("k", [1, 10, 40, 200, 500])  # 40 > a shard, 500 > the corpus
def test_search_equals_brute_force(corpus, chunk_rows, k):
    vectors, labels, index, meta = corpus
    assert [s["rows"] for s in meta["shards"]] == [37, 37, 37, 37, 37, 15]
    queries = np.random.default_rng(k).normal(size=(6, 8)).astype(np.float32)
    rows, scores = search_rows(index, queries, k, chunk_rows=chunk_rows)
    want_rows, want_scores = _brute_force(vectors, queries, k)
    assert rows.shape == (6, min(k, 200))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    ids, id_scores = search(index, queries, k, chunk_rows=chunk_rows)
    assert ids[2] == [f"row-{r}" for r in want_rows[2]]
    np.testing.assert_array_equal(id_scores, scores)


def test_ties_come_in_row_order_across_shards_and_chunks(tmp_path):
    # Basis vectors: every score is exactly 0, 1 or 1/sqrt(2), whatever the summation order.
    vectors = np.eye(4, dtype=np.float32)[np.arange(30) % 4]
    _write(tmp_path / "idx", vectors, shard_rows=7)
    index = open_index(tmp_path / "idx")
    queries = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=np.float32)
    for chunk_rows in [None, 2, 3, 7]:
        rows, scores = search_rows(index, queries, 9, chunk_rows=chunk_rows)
        assert rows[0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 1]
        assert rows[1].tolist() == [1, 2, 5, 6, 9, 10, 13, 14, 17]
        np.testing.assert_allclose(scores[0, :8], 1.0)
        assert scores[0, 8] == 0.0
    want, _ = _brute_force(vectors, queries, 9)
    np.testing.assert_array_equal(rows, want)


def test_round_trip_keeps_vectors_ids_and_labels(corpus, tmp_path):
    vectors, labels, index, meta = corpus
    assert meta["rows"] == index.rows == 200 and meta["dim"] == index.dim == 8
    assert meta["model"] == "m" and meta["modality"] == "image" and meta["labelled"]
    stored = np.concatenate([np.asarray(s.vectors) for s in index.shards])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, unit, atol=1e-6)
    assert stored.dtype == np.float32
    assert all(isinstance(s.vectors, np.memmap) for s in index.shards)
    assert index.ids([0, 36, 37, 199]) == ["row-0", "row-36", "row-37", "row-199"]
    assert index.labels(range(200)) == labels.tolist()
    # unlabelled, with non-ASCII ids
    ids = [f"행-{i}" for i in range(70)]
    _write(tmp_path / "u", vectors[:70], ids=ids, shard_rows=100)
    plain = open_index(tmp_path / "u")
    assert plain.ids(range(70)) == ids and plain.labels([3]) == [None]


def test_labels_read_back(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    labels = np.arange(50) % 5
    labels[7] = -1  # a row without a label
    _write(tmp_path / "idx", vectors, labels=labels, shard_rows=20)
    index = open_index(tmp_path / "idx")
    assert index.labels([0, 6, 7, 49]) == [0, 1, None, 4]


def test_rebuild_replaces_and_interrupted_build_is_not_an_index(tmp_path):
    out = tmp_path / "idx"
    rng = np.random.default_rng(2)
    first = rng.normal(size=(40, 4)).astype(np.float32)
    _write(out, first, shard_rows=10)
    interrupted = IndexWriter(str(out), model="m", modality="image", dim=4, shard_rows=10)
    interrupted.add([f"x{i}" for i in range(25)], rng.normal(size=(25, 4)))  # 2 shards written
    assert len(list(out.glob("parts-*"))) == 2
    index = open_index(out)  # the old index is still whole
    assert index.rows == 40 and index.ids([39]) == ["row-39"]
    second = rng.normal(size=(65, 4)).astype(np.float32)
    _write(out, second, shard_rows=10)
    assert len(list(out.glob("parts-*"))) == 1  # older builds' shards removed
    index = open_index(out)
    assert index.rows == 65
    rows, _ = search_rows(index, second[12:13], 1)
    assert rows.tolist() == [[12]]

    fresh = IndexWriter(str(tmp_path / "new"), model="m", modality="image", dim=4, shard_rows=10)
    fresh.add([f"x{i}" for i in range(25)], rng.normal(size=(25, 4)))
    with pytest.raises(FileNotFoundError, match=f"new/{INDEX_FILE}: missing"):
        open_index(tmp_path / "new")


def test_search_errors(corpus, tmp_path):
    _, _, index, _ = corpus
    with pytest.raises(ValueError, match="8-d vectors"):
        search(index, np.ones((2, 5), np.float32), 3)
    for k in [0, -1]:
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            search(index, np.ones((1, 8), np.float32), k)
    with pytest.raises(ValueError, match="NaN"):
        search(index, np.full((1, 8), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="all zeros"):
        search(index, np.zeros((1, 8), np.float32), 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = {"format": "polymodal-index", "version": 1, "model": "m", "modality": "image"}
    (empty / INDEX_FILE).write_text(json.dumps({**meta, "dim": 8, "rows": 0, "shards": []}))
    with pytest.raises(ValueError, match="empty"):
        search(open_index(empty), np.ones((1, 8), np.float32), 3)


def test_writer_errors(tmp_path):
    writer = IndexWriter(str(tmp_path / "w"), model="m", modality="image", dim=4)
    with pytest.raises(ValueError, match="row b: embedding is not finite"):
        writer.add(["a", "b"], np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32))
    with pytest.raises(ValueError, match=r"expected \[n, 4\]"):
        writer.add(["a"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="no rows"):
        writer.finish()
    assert not (tmp_path / "w" / INDEX_FILE).exists()


def _damaged(tmp_path, damage):
    out = tmp_path / "idx"
    meta = _write(out, np.random.default_rng(3).normal(size=(60, 4)).astype(np.float32))
    target = out / meta["shards"][1]["vectors"]
    damage(out, target)
    return out, target


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda out, f: f.unlink(), "missing"),
        (lambda out, f: f.write_bytes(f.read_bytes()[:200]), "cannot read"),
        (lambda out, f: f.write_bytes(b"not an npy file at all"), "cannot read"),
        (lambda out, f: np.save(f, np.ones((37, 4))), "float64"),
        (lambda out, f: np.save(f, np.ones((36, 4), np.float32)), r"\(36, 4\)"),
    ],
)
def test_damaged_shard_is_named(tmp_path, damage, message):
    out, target = _damaged(tmp_path, damage)
    with pytest.raises(IndexFileError, match=message) as err:
        open_index(out)
    assert str(target) in str(err.value)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"format": "other"}), "not a polymodal-index"),
        (json.dumps({"format": "polymodal-index", "version": 99}), "version 99"),
        (json.dumps({"format": "polymodal-index", "version": 1, "model": "m"}), "missing"),
    ],
)
def test_bad_index_json_is_named(tmp_path, content, message):
    out, _ = _damaged(tmp_path, lambda out, f: (out / INDEX_FILE).write_text(content))
    with pytest.raises(IndexFileError, match=message) as err:
        open_index(out)
    assert str(out / INDEX_FILE) in str(err.value)


def test_matryoshka_index_takes_full_size_queries(tmp_path):
    """An index of 4-number prefixes of 8-d embeddings (polymodal index --dimensions 4):
    full-size queries are truncated and renormalised as its rows were."""
    from polymodal.retrieval.vectors import truncate

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    writer = IndexWriter(str(tmp_path), model="m", modality="image", dim=4, info={"embed_dim": 8})
    writer.add([f"row-{i}" for i in range(50)], truncate(vectors, 4))
    writer.finish()
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    rows, _ = search_rows(open_index(tmp_path), queries, 5)
    want, _ = _brute_force(vectors[:, :4], queries[:, :4], 5)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(np.linalg.norm(truncate(queries[0], 4)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="queries of shape"):
        search_rows(open_index(tmp_path), queries[:, :6], 5)  # neither size


def test_quantized_indexes_find_what_exact_search_finds_in_less_space(tmp_path):
    """int8 codes (4x smaller) and sign bits (32x smaller, candidates rescored with the int8
    codes beside them) against exact search on clustered vectors: recall@10 and bytes."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 64))
    vectors = (centres[rng.integers(0, 40, 3000)] + rng.normal(0, 0.6, (3000, 64))).astype("f4")
    queries = (centres[rng.integers(0, 40, 50)] + rng.normal(0, 0.6, (50, 64))).astype("f4")
    exact, _ = search_rows(open_index(_written(tmp_path / "f", vectors, "float32")), queries, 10)
    recall, size = {}, {}
    for precision in ("float32", "int8", "binary"):
        index = open_index(_written(tmp_path / precision, vectors, precision))
        rows, scores = search_rows(index, queries, 10)
        recall[precision] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
        size[precision] = sum(s.vectors.nbytes for s in index.shards)
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert recall["float32"] == 1.0
    assert recall["int8"] >= 0.95 and recall["binary"] >= 0.8, recall
    assert size["float32"] == 4 * size["int8"] == 32 * size["binary"]


def _written(out, vectors, precision):
    writer = IndexWriter(str(out), model="m", modality="image", dim=64, precision=precision)
    writer.add([f"row-{i}" for i in range(len(vectors))], vectors)
    writer.finish()
    return out


def test_quantized_index_json_must_say_its_ranges(tmp_path):
    out = _written(tmp_path / "q", np.random.default_rng(0).normal(size=(20, 64)), "int8")
    meta = json.loads((out / INDEX_FILE).read_text())
    assert meta["precision"] == "int8" and np.asarray(meta["ranges"]).shape == (2, 64)
    del meta["ranges"]
    (out / INDEX_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="int8 vectors without their int8 ranges"):
        open_index(out)
    with pytest.raises(ValueError, match="precision must be one of"):
        IndexWriter(str(tmp_path / "x"), model="m", modality="image", dim=4, precision="int4")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_exact_search(tmp_path, kind):
    """A FAISS index per shard (3 shards here), answers merged: recall@10 against exact."""
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(30, 32))
    vectors = (centres[rng.integers(0, 30, 3000)] + rng.normal(0, 0.5, (3000, 32))).astype("f4")
    queries = vectors[rng.integers(0, 3000, 40)] + rng.normal(0, 0.05, (40, 32)).astype("f4")
    for name, k in [("exact", "exact"), (kind, kind)]:
        writer = IndexWriter(
            str(tmp_path / name), model="m", modality="image", dim=32, shard_rows=1000, kind=k
        )
        writer.add([f"row-{i}" for i in range(3000)], vectors)
        writer.finish()
    exact, _ = search_rows(open_index(tmp_path / "exact"), queries, 10)
    index = open_index(tmp_path / kind)
    assert index.kind == kind and all(s.ann is not None for s in index.shards)
    rows, scores = search_rows(index, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert recall >= 0.9, recall
    assert (np.diff(scores, axis=1) <= 1e-6).all() and rows.max() < 3000
    with pytest.raises(ValueError, match="holds float32 vectors, not int8"):
        IndexWriter(
            str(tmp_path / "x"), model="m", modality="i", dim=4, kind=kind, precision="int8"
        )
