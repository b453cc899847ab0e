"""The training order (data/order.py) and what a read task makes of it (PieceReader): a
function of (seed, epoch, world), every row once, and a resumed plan that continues exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polymodal.data.order import epoch_plan, pack, resume_plan, unpack
from polymodal.data.pipeline import PieceReader, decode_table
from polymodal.modalities import Preprocessing
from polymodal.modalities.text import decode_text

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
    reader = PieceReader(
        ["id", "text", "label"],
        16,
        lambda t, positions: decode_table(t, prep.to_dict(), positions=positions),
        ordered=True,
    )
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
