"""The training order (data/order.py) and what a read task makes of it (PieceReader): a
function of (seed, epoch, world), every row once, and a resumed plan that continues exactly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from polymodal.data.decoded_cache import CachedPiece, DecodedCache
from polymodal.data.format import DatasetWriter, read_manifest
from polymodal.data.order import epoch_plan, pack, redeal, resume_plan, unpack
from polymodal.data.pipeline import BadRows, PieceReader, pieces
from polymodal.modalities import Preprocessing
from polymodal.modalities.text import decode_text
from polymodal.train.epoch_data import rebatched

PIECES = [{"uri": f"s{i // 3}", "group": i % 3, "rows": 100 if i != 7 else 40} for i in range(10)]


def test_a_plan_is_a_function_of_seed_epoch_and_world():
    plan = epoch_plan(PIECES, seed=0, epoch=1, world=2)
    assert plan == epoch_plan(PIECES, seed=0, epoch=1, world=2)
    assert plan != epoch_plan(PIECES, seed=0, epoch=2, world=2)
    assert plan != epoch_plan(PIECES, seed=1, epoch=1, world=2)
    rows = {}  # (uri, group) -> the rows of it dealt, over all ranks
    for rank in plan:
        for p in rank:
            rows.setdefault((p["uri"], p["group"]), []).extend(range(p["lo"], p["hi"]))
    for p in PIECES:  # every row of every piece once
        assert sorted(rows[(p["uri"], p["group"])]) == list(range(p["rows"]))
    each = [sum(p["hi"] - p["lo"] for p in rank) for rank in plan]
    assert each == [470, 470]  # equal rows: one piece is cut between the two ranks
    for rank in plan:
        assert [p["ordinal"] for p in rank] == list(range(len(rank)))


def test_a_resumed_plan_starts_at_the_next_position():
    plan = epoch_plan(PIECES, seed=0, epoch=1, world=2)[1]
    rest = resume_plan(plan, pack(2, 37))
    assert [p["ordinal"] for p in rest] == [p["ordinal"] for p in plan[2:]]
    assert rest[0]["skip"] == 37 and plan[2]["skip"] == 0  # the plan itself is unchanged
    assert unpack(pack(5, 2**32 - 1)) == (5, 2**32 - 1)


def _rows(plan: list[dict]) -> list[tuple[tuple, int]]:
    """A rank's rows in reading order, each with its position: a row group's shuffled rows
    lo..hi (from skip on), a tar's (here 6 rows, counted as one when dealing) from skip on."""
    out = []
    for p in plan:
        first = max(p.get("lo", 0), p["skip"])
        for row in range(first, p.get("hi", 6)):
            out.append(((p["uri"], p["group"], row), pack(p["ordinal"], row)))
    return out


def test_an_epoch_resumed_on_other_worker_counts_reads_every_row_once():
    """2 -> 1 -> 3 workers, each part stopped after some steps: what each rank had left is
    dealt over the next part's ranks; over the three parts every row is read once."""
    pieces = PIECES + [{"uri": "t0.tar", "group": -1}, {"uri": "t1.tar", "group": -1}]
    plans, read = epoch_plan(pieces, seed=0, epoch=1, world=2), []
    for steps, world in ((130, 1), (251, 3), (None, None)):
        nexts = []
        for plan in plans:
            rows = _rows(plan)[:steps]
            read += [key for key, _ in rows]
            nexts.append(rows[-1][1] + 1 if rows else 0)
        if world is None:
            break
        plans = redeal(plans, nexts, world)
        each = [len(_rows(plan)) for plan in plans]
        assert max(each) - min(each) <= 6  # equal rows but for an uncut tar's
        for plan in plans:
            assert [p["ordinal"] for p in plan] == list(range(len(plan)))
    everything = [key for plan in epoch_plan(pieces, 0, 1, 2) for key, _ in _rows(plan)]
    assert len(read) == len(set(read)) and sorted(read) == sorted(everything)
    assert len(everything) == 940 + 2 * 6


def test_a_reader_shuffles_by_seed_and_resumes_where_it_stopped(tmp_path):
    n = 50
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": [str(i) for i in range(n)],
            "label": list(range(n)),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=n)
    prep = Preprocessing(["text"], text_max_len=4)
    reader = PieceReader(["id", "text", "label"], 16, {"prep": prep.to_dict()}, ordered=True)
    item = {"uri": str(tmp_path / "s.parquet"), "group": 0, "seed": [0, 1, 0], "ordinal": 3}

    def rows(item):
        blocks = [b.to_pydict() for b in reader(item)]
        return [(lab, pos) for b in blocks for lab, pos in zip(b["label"], b["position"])], blocks

    whole, blocks = rows(item)
    labels = [lab for lab, _ in whole]
    assert sorted(labels) == list(range(n)) and labels != list(range(n))  # shuffled, all once
    assert labels == [lab for lab, _ in rows(item)[0]]  # the same seed, the same order
    for b in blocks:  # columns stay aligned through the shuffle
        for text, lab in zip(b["text"], b["label"]):
            assert decode_text(np.asarray(text)) == str(lab)
    positions = [pos for _, pos in whole]
    assert positions == [pack(3, i) for i in range(n)]
    rest, _ = rows({**item, "skip": 21})
    assert rest == whole[21:]
    part, _ = rows({**item, "lo": 10, "hi": 30, "skip": 21})  # a rank's part of the piece
    assert part == whole[21:30]


class Counted:
    """A BadRows called in place of its actor (`add.remote`)."""

    def __init__(self) -> None:
        self.rows = BadRows()
        self.add = SimpleNamespace(remote=self.rows.add)


def _row_groups(tmp_path, n: int = 50) -> list[dict]:
    """Two row groups of n rows; rows 45+ have a label out of range and row 7 no text."""
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": [None if i == 7 else str(i) for i in range(n)],
            "label": list(range(n)),
        }
    )
    pq.write_table(pa.concat_tables([table, table]), tmp_path / "s.parquet", row_group_size=n)
    return [{"uri": str(tmp_path / "s.parquet"), "group": g, "rows": n} for g in range(2)]


def _listed(block) -> dict[str, list]:
    return {k: [np.asarray(x).tolist() for x in v] for k, v in block.to_pydict().items()}


def test_the_decoded_cache_reads_what_decoding_gives(tmp_path):
    items = _row_groups(tmp_path)
    prep = Preprocessing(["text"], text_max_len=4)
    decoding = {"prep": prep.to_dict(), "num_labels": 45, "with_samples": True}
    cache = DecodedCache(str(tmp_path / "cache"))

    def reader(cached: bool) -> PieceReader:
        return PieceReader(
            ["id", "text", "label"],
            16,
            decoding,
            True,
            Counted(),
            "train",
            "",
            cache if cached else None,
        )

    plain, cached = reader(False), reader(True)
    item = {**items[1], "seed": [0, 1, 0], "ordinal": 3}
    assert not cached.cached(item)
    for part in ({}, {"skip": 21}, {"lo": 10, "hi": 30, "skip": 21}, {}):
        want = [_listed(b) for b in plain({**item, **part})]
        assert [_listed(b) for b in cached({**item, **part})] == want
        assert cached.cached(item)  # decoded once, then read from the files
    assert cached.bad_rows.rows.totals() == plain.bad_rows.rows.totals()
    bad = plain.bad_rows.rows.totals()["bad"]["train"]
    # 4 passes over row group 1: all of it twice, then rows 21.. and 21..30 of its shuffle
    assert sum(bad.values()) > 0 and set(bad) == {"label out of range", "no modality present"}


def test_a_rewritten_shard_is_decoded_anew(tmp_path):
    def write(text: str) -> list[dict]:
        writer = DatasetWriter(
            tmp_path / "d", ["text"], {"text": "utf-8"}, ["a", "b"], True, overwrite=True
        )
        for i in range(20):
            writer.add("train", {"id": f"r{i}", "text": f"{text} {i}", "label": i % 2})
        writer.finish("test", {}, {})
        return pieces(str(tmp_path / "d"), read_manifest(tmp_path / "d"), "train")

    first, again, other = write("one"), write("one"), write("two")
    assert [p["version"] for p in first] == [p["version"] for p in again]
    assert first[0]["version"] != other[0]["version"]
    cache = DecodedCache(str(tmp_path / "cache"))
    cache.store(first[0], CachedPiece({"label": np.zeros(20)}, np.ones(20, dtype=bool)))
    assert cache.has(first[0]) and not cache.has(other[0])


def test_a_worker_cuts_blocks_into_the_batches_ray_data_would(tmp_path):
    items = _row_groups(tmp_path)
    prep = Preprocessing(["text"], text_max_len=4)
    reader = PieceReader(
        ["id", "text", "label"],
        16,
        {"prep": prep.to_dict(), "num_labels": 45},
        ordered=True,
        cache=DecodedCache(str(tmp_path / "cache")),
    )
    plan = epoch_plan(items, seed=0, epoch=1, world=2)[0]
    rows = [b.to_pydict() for it in plan for b in reader(it)]
    labels = [x for b in rows for x in b["label"]]
    positions = [x for b in rows for x in b["position"]]
    blocks = (b for it in plan for b in reader.blocks(it))
    batches = list(rebatched(blocks, 8, torch.device("cpu")))
    assert [len(b["label"]) for b in batches] == [8] * (len(labels) // 8)  # drop_last
    assert torch.cat([b["label"] for b in batches]).tolist() == labels[: 8 * len(batches)]
    assert torch.cat([b["position"] for b in batches]).tolist() == positions[: 8 * len(batches)]
    assert (
        batches[0]["text"].dtype == torch.int64
        and batches[0]["text_present"].dtype == torch.float32
    )
