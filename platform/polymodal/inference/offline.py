"""Batch inference with Ray Data: every row of a dataset split through a checkpoint's encoders,
written as Parquet (`polymodal embed`) or as a retrieval index (`polymodal index`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from polymodal import storage
from polymodal.data.decode import content_hash
from polymodal.data.format import DatasetError, open_shard, read_manifest
from polymodal.data.pipeline import pieces
from polymodal.inference.model import LoadedModel, model_card
from polymodal.objectives.contrastive import CONTRASTIVE
from polymodal.retrieval.index import IndexWriter, rebuildable
from polymodal.retrieval.vectors import truncate

SMALL_CPUS = 0.25


def read_row_groups(items: pa.Table, columns: list[str] | None) -> pa.Table:
    """The Parquet row groups named in items (uri, group), concatenated."""
    groups = zip(items.column("uri").to_pylist(), items.column("group").to_pylist())
    return pa.concat_tables(open_shard(u).read_row_group(g, columns=columns) for u, g in groups)


def vector_column(vectors: np.ndarray, present: np.ndarray) -> pa.Array:
    """list<float32>: the rows of `vectors` where `present`, null elsewhere."""
    lengths = np.where(present, vectors.shape[1], 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(vectors.reshape(-1)), mask=pa.array(~present)
    )


def column_vectors(table: pa.Table, column: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """vector_column's inverse: [n, dim] float32 (zeros where null) and the rows' presence."""
    col = table.column(column).combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros((table.num_rows, dim), dtype=np.float32)
    out[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out, valid


class EmbedBatch:
    """A Ray Data actor: loads the checkpoint once, embeds every batch it is given; with
    hashes, also each raw value's content_hash (`{m}_hash`, 0 where none)."""

    def __init__(self, checkpoint: str, modalities: list[str] | None = None, hashes: bool = False):
        self.model = LoadedModel.load(str(checkpoint))
        self.modalities = modalities or self.model.model.modalities
        self.hashes = hashes

    def __call__(self, table: pa.Table) -> pa.Table:
        out = {"id": table.column("id")}
        if "label" in table.column_names:
            out["label"] = table.column("label")
        for m in self.modalities:
            if m not in table.column_names:
                continue
            values = table.column(m).to_pylist()
            present = np.array([v is not None for v in values], dtype=bool)
            emb = np.zeros((0, self.model.model.embed_dim), dtype=np.float32)
            if present.any():
                emb = self.model.embed(m, [v for v in values if v is not None])
            out[f"{m}_embedding"] = vector_column(emb.astype(np.float32), present)
            if self.hashes:
                out[f"{m}_hash"] = pa.array(
                    [content_hash(v) if v is not None else 0 for v in values], pa.int64()
                )
        return pa.table(out)


def embedded_split(
    checkpoint: str,
    dataset: str,
    split: str | tuple[str, ...] = "val",
    modalities: list[str] | None = None,
    batch_size: int = 256,
    num_cpus: float = 1.0,
    actors: int = 1,
    hashes: bool = False,
) -> ray.data.Dataset:
    """A lazy Dataset of id, label (when labelled) and `{m}_embedding` per modality, null
    where a row has no such value (and `{m}_hash` with hashes, see EmbedBatch), of the split
    (or of several, one after the other)."""
    manifest = read_manifest(dataset)
    columns = None
    if modalities:
        missing = [m for m in modalities if m not in manifest.modalities]
        if missing:
            raise DatasetError(f"{dataset}: no {missing} column (has {list(manifest.modalities)})")
        columns = ["id", *modalities] + (["label"] if manifest.label_names is not None else [])
    # One read task per row group, asking for a fraction of a CPU, as is the actor: on a
    # busy cluster (a Serve app beside it) less than one CPU may be free, and read_parquet
    # lists its files in a task that asks for a whole one, so the job waited forever.
    splits = (split,) if isinstance(split, str) else split
    items = [p for sp in splits for p in pieces(dataset, manifest, sp)]  # checks schemas too
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        # Ray types fn as taking the batch alone, though fn_kwargs (documented) gives the rest.
        read_row_groups,  # type: ignore[arg-type]
        fn_kwargs={"columns": columns},
        batch_format="pyarrow",
        batch_size=1,
        num_cpus=SMALL_CPUS,
    )
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "modalities": modalities,
            "hashes": hashes,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
    )


def embed_dataset(
    checkpoint: str,
    dataset: str,
    out: str,
    split: str = "val",
    batch_size: int = 256,
    num_cpus: float = 1.0,
) -> int:
    # Ray writes its Parquet files beside whatever is there: a new or empty directory only.
    storage.check_output_dir(out, "OUT", {"the dataset": dataset, "the checkpoint": checkpoint})
    ds = embedded_split(checkpoint, dataset, split, None, batch_size, num_cpus)
    # Write tasks ask for a whole CPU by default: with less than one free beside the
    # actor (a Serve app on the cluster) the write never started.
    ds.write_parquet(out, ray_remote_args={"num_cpus": SMALL_CPUS})
    return read_manifest(dataset).rows(split)


@dataclass
class IndexReport:
    out: str
    model: str
    modality: str
    dim: int
    rows: int
    skipped: int  # rows without a value of the modality
    shards: int
    bytes_written: int
    seconds: float


def check_index_inputs(
    checkpoint: str, dataset: str, modality: str, split: str, dimensions: int | None = None
):
    """(model card, manifest), or a clear error, from two small files: before Ray starts."""
    card = model_card(checkpoint)
    if modality not in card["modalities"]:
        raise ValueError(f"{checkpoint}: no {modality} encoder (it has {card['modalities']})")
    if dimensions is not None and dimensions not in card["dimensions"]:
        raise ValueError(
            f"{checkpoint}: not trained for {dimensions} dimensions (it was for "
            f"{card['dimensions']}; objective.{CONTRASTIVE.name}.matryoshka_dims adds sizes)"
        )
    manifest = read_manifest(dataset)
    if split not in manifest.splits:
        raise DatasetError(f"{dataset}: no split '{split}' (has {sorted(manifest.splits)})")
    if modality not in manifest.modalities:
        raise DatasetError(f"{dataset}: no {modality} column (has {list(manifest.modalities)})")
    return card, manifest


def build_index(
    checkpoint: str,
    dataset: str,
    out: str,
    modality: str = "image",
    split: str = "val",
    shard_rows: int = 100_000,
    batch_size: int = 256,
    num_cpus: float = 1.0,
    actors: int = 1,
    model_name: str | None = None,
    progress: Callable[[str], None] | None = print,
    dimensions: int | None = None,
    precision: str = "float32",
    kind: str = "exact",
) -> IndexReport:
    """Embed one modality of a split and write it as an exact search index at out (local or
    s3://). Vectors stream from the embedding actors to this process, which writes a shard
    every shard_rows rows: its memory holds one shard, never the corpus. dimensions: keep
    that Matryoshka prefix of each embedding (one the model was trained at). precision:
    float32, int8 or binary (retrieval.index.PRECISIONS), int8 ranges from the checkpoint's
    calibration. kind: exact, or hnsw / ivf (FAISS, approximate: retrieval.ann)."""
    start = time.perf_counter()
    inputs = {"the dataset": dataset, "the checkpoint": checkpoint}
    storage.check_output_dir(out, "OUT", inputs, rebuildable)  # before a row is embedded
    card, manifest = check_index_inputs(checkpoint, dataset, modality, split, dimensions)
    dim = dimensions or card["dimension"]
    total = manifest.rows(split)
    name = model_name or Path(str(checkpoint).rstrip("/")).name
    writer = IndexWriter(
        out,
        model=name,
        modality=modality,
        dim=dim,
        shard_rows=shard_rows,
        precision=precision,
        span=card["calibration"].get(dim),
        kind=kind,
        info={
            "embed_dim": card["dimension"],  # the model's: queries of it are truncated to dim
            "checkpoint": str(checkpoint),
            "dataset": str(dataset),
            "split": split,
            "label_names": manifest.label_names,
        },
    )
    ds = embedded_split(checkpoint, dataset, split, [modality], batch_size, num_cpus, actors)
    seen, last = 0, time.perf_counter()
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(table, pa.Table)  # Ray types a batch as any of its formats
        seen += table.num_rows
        column = table.column(f"{modality}_embedding")
        table = table.filter(column.is_valid())
        if table.num_rows:
            flat = pa.concat_arrays(
                [c.flatten() for c in table.column(f"{modality}_embedding").chunks]
            )
            vectors = flat.to_numpy().reshape(table.num_rows, card["dimension"])
            labels = None
            if "label" in table.column_names:
                labels = table.column("label").fill_null(-1).to_numpy()
            writer.add(table.column("id").to_pylist(), truncate(vectors, dimensions), labels)
        if progress and (time.perf_counter() - last > 5 or seen == total):
            last = time.perf_counter()
            rate, shards = seen / (last - start), len(writer.shards)
            progress(f"embedded {seen}/{total} rows ({rate:.0f} rows/s), {shards} shards written")
    skipped = seen - writer.rows
    if not writer.rows:
        raise ValueError(f"{dataset}: no {split} row has a {modality} value; nothing to index")
    meta = writer.finish()
    return IndexReport(
        out=str(out),
        model=name,
        modality=modality,
        dim=dim,
        rows=meta["rows"],
        skipped=skipped,
        shards=len(meta["shards"]),
        bytes_written=writer.bytes_written,
        seconds=time.perf_counter() - start,
    )
