"""The Ray Data side: read a split's Parquet shards and decode them in CPU tasks.

Train workers then take `get_dataset_shard(...).iter_torch_batches(drop_last=True)`, which
with Train's equal streaming split gives every rank the same number of batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from polymodal import storage
from polymodal.data.decode import Preprocessing, decode_columns
from polymodal.data.format import read_columns, read_manifest, shard_paths


def decode_table(
    table: pa.Table, prep: dict[str, Any], with_hashes: bool = False, shuffle: bool = False
) -> dict:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out = decode_columns(columns, Preprocessing(**prep), with_hashes=with_hashes)
    if shuffle:  # a fresh permutation every time the block is decoded, i.e. every epoch
        order = np.random.default_rng().permutation(len(table))
        out = {k: v[order] for k, v in out.items()}
    return out


def read_shards(uris: list[str], **kwargs) -> ray.data.Dataset:
    """read_parquet over local or s3:// shards, with our S3 settings (endpoint, region)."""
    fs, _ = storage.resolve(uris[0])
    paths = [storage.resolve(u)[1] for u in uris]
    return ray.data.read_parquet(paths, filesystem=fs, **kwargs)


def split_dataset(
    path: str,
    split: str,
    prep: Preprocessing,
    decode_batch_size: int = 1024,
    with_hashes: bool = False,
    shuffle: bool = False,
) -> ray.data.Dataset:
    """Lazy Ray Dataset of decoded arrays for one split (nothing is read until iterated)."""
    manifest = read_manifest(path)
    columns = read_columns(path, manifest, prep.modalities)
    ds = read_shards(shard_paths(path, manifest, split)).select_columns(columns)
    if shuffle:  # a new block order every epoch, without moving rows between blocks
        ds = ds.randomize_block_order()
    return ds.map_batches(
        decode_table,
        batch_format="pyarrow",
        batch_size=decode_batch_size,
        fn_kwargs={"prep": prep.to_dict(), "with_hashes": with_hashes, "shuffle": shuffle},
    )
