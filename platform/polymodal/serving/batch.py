"""`polymodal embed`: embeddings for a whole dataset split with Ray Data (batch inference),
written as Parquet: id, label, and one list<float32> column per modality."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from polymodal.data.format import read_manifest, shard_paths
from polymodal.data.pipeline import read_shards
from polymodal.serving.models import LoadedModel


class EmbedBatch:
    """A Ray Data actor: loads the checkpoint once, embeds every batch it is given."""

    def __init__(self, checkpoint: str):
        self.model = LoadedModel.load(str(checkpoint))

    def __call__(self, table: pa.Table) -> pa.Table:
        out = {"id": table.column("id")}
        if "label" in table.column_names:
            out["label"] = table.column("label")
        for m in self.model.model.modalities:
            if m not in table.column_names:
                continue
            values = table.column(m).to_pylist()
            rows = [i for i, v in enumerate(values) if v is not None]
            vectors = [None] * len(values)
            if rows:
                emb = self.model.embed(m, [values[i] for i in rows]).astype(np.float32)
                for i, vec in zip(rows, emb):
                    vectors[i] = vec.tolist()
            out[f"{m}_embedding"] = pa.array(vectors, type=pa.list_(pa.float32()))
        return pa.table(out)


def embed_dataset(
    checkpoint: str,
    dataset: str,
    out: str,
    split: str = "val",
    batch_size: int = 256,
    num_cpus: float = 1.0,
) -> int:

    manifest = read_manifest(dataset)
    # Small CPU requests: on a busy cluster (a Serve app beside it) one whole CPU per read
    # task and per actor may never be free, and the job would wait forever.
    ds = read_shards(shard_paths(dataset, manifest, split), ray_remote_args={"num_cpus": 0.25})
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"checkpoint": checkpoint},
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=1,
        num_cpus=num_cpus,
    )
    ds.write_parquet(out)
    return manifest.rows(split)
