"""builtin:fashion-records: a classification whose answer needs two modalities at once. Each
row is a real Fashion-MNIST item (image) and a shop record (vector: the department it is
stocked in, women's or men's, with its price, size and rating, which are noise); the class is
"<department> <item>" (20 classes). The image alone cannot tell the department (at best half
right), the record alone cannot tell the item (a tenth).

Deterministic: the record of row i comes from seed (SEED, i); Fashion-MNIST's 60k/10k split
is train/val.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np

from polymodal.data.sources.base import RawRow, Source
from polymodal.data.sources.builtin import FASHION_LABELS, fashion_mnist

SEED = 32
DEPARTMENTS = ["women's", "men's"]
LABELS = [f"{d} {item}" for d in DEPARTMENTS for item in FASHION_LABELS]


def record(row_id: str) -> tuple[int, list[float]]:
    """(department, the record: [department ±1, price, size, rating]) of a row."""
    rng = np.random.default_rng([SEED, int(hashlib.md5(row_id.encode()).hexdigest()[:15], 16)])
    department = int(rng.integers(2))
    price, size, rating = rng.lognormal(3.0, 0.5), rng.integers(34, 48), rng.uniform(1, 5)
    return department, [2.0 * department - 1.0, float(price), float(size), float(rating)]


def fashion_records(limit: int | None = None) -> Source:
    items = fashion_mnist(limit)

    def rows() -> Iterator[RawRow]:
        for row in items.rows:
            assert row.label is not None  # every Fashion-MNIST item has its class
            department, vector = record(row.id)
            values = {"image": row.values["image"], "vector": vector}
            label = department * len(FASHION_LABELS) + row.label
            yield RawRow(row.number, row.id, values, label, split=row.split)

    return dataclasses.replace(
        items,
        name="builtin:fashion-records",
        modalities=["image", "vector"],
        encodings={"image": "png", "vector": "float32"},
        label_names=LABELS,
        rows=rows(),
        extra={},
    )
