"""A CLIP_benchmark dataset directory (its webdataset layout, local or s3://) as an ingest
source: classification sets give image, label (classnames.txt names the classes) and a
caption from one of its templates (as builtin:digits), retrieval sets a row per caption.

Its `train` split stays train and any other becomes val; a set with one split only (the
usual `test`) is split by image, all of an image's captions on one side.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

from polymodal.data.clip_benchmark import Layout, read_layout
from polymodal.data.format import DatasetError
from polymodal.data.sources.base import RawRow, Source
from polymodal.data.sources.builtin import caption


def shard_rows(uri: str, layout: Layout, splits: tuple[str, ...]) -> Iterator[RawRow]:
    split = uri.rstrip("/").rsplit("/", 2)[-2]
    ours = None if len(splits) == 1 else ("train" if split == "train" else "val")
    number = 0
    try:
        for sample in layout.shard_samples(uri):
            key = f"{split}/{sample.key}"
            if layout.kind == "zeroshot_classification":
                number += 1
                name = layout.classnames[sample.label or 0]
                values = {"image": sample.image, "text": caption(key, name, layout.templates)}
                yield RawRow(number, key, values, sample.label, ours, key, shard=uri)
                continue
            for i, text in enumerate(sample.captions or []):
                number += 1
                values = {"image": sample.image, "text": text}
                yield RawRow(number, f"{key}#{i}", values, None, ours, key, shard=uri)
    except DatasetError as exc:  # a bad sample ends its shard: said, with what came before
        yield RawRow(number + 1, f"{split}/?", {}, None, ours, error=str(exc), shard=uri)


def clip_benchmark(root: str, limit: int | None = None) -> Source:
    layout = read_layout(root)
    splits = tuple(layout.splits())
    if not splits:
        raise DatasetError(f"{root}: no split directory with nshards.txt")
    uris = [u for s in splits for u in layout.shards(s)]
    rows_of = functools.partial(shard_rows, layout=layout, splits=splits)
    rows = itertools.chain.from_iterable(rows_of(u) for u in uris)
    classification = layout.kind == "zeroshot_classification"
    return Source(
        name=f"clip_benchmark:{root}",
        modalities=["image", "text"],
        encodings={"image": "jpeg|png|webp", "text": "utf-8"},
        label_names=layout.classnames if classification else None,
        labelled=classification,
        rows=itertools.islice(rows, limit) if limit else rows,
        extra={"caption_templates": layout.templates} if classification else {},
        shards=uris,
        shard_rows=rows_of,
    )
