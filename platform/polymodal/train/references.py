"""Frozen reference models of a run (distill's teacher, the contrastive guide): each one's
embeddings of every train and val value, computed once with Ray Data before the workers start
(with its own preprocessing: another tokenizer or image size is fine), shared through the
object store, and looked up in each batch by the values' content hashes (mined negatives too).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from polymodal.batch import Batch, reference_key, split_direction
from polymodal.config import Config
from polymodal.data.dataset import DataSource
from polymodal.data.format import is_webdataset, mined
from polymodal.objectives import active_terms

# modality -> (its values' sorted content hashes [n], their embeddings [n, D]), per role
Table = dict[str, tuple[np.ndarray, np.ndarray]]


class ReferenceError(ValueError):
    """A value a reference model has no embedding of: the data changed after it was read."""


def reference_checkpoints(cfg: Config) -> dict[str, tuple[str, str, list[str]]]:
    """role -> (the setting naming it, checkpoint, the modalities it must embed), of the
    active terms; a run directory given as the checkpoint stands for its newest one."""
    from polymodal.checkpoint import checkpoint_or_newest

    out: dict[str, tuple[str, str, list[str]]] = {}
    for term in active_terms(cfg).values():
        for role, (setting, uri, modalities) in term.references(cfg).items():
            out[role] = (setting, checkpoint_or_newest(uri), modalities)
    return out


def check_references(cfg: Config, sources: list[DataSource]) -> None:
    """Each reference checkpoint exists and embeds the modalities its term reads; the data
    is Parquet (tars have no row-group reads to embed). Before Ray."""
    from polymodal.inference.model import model_card

    for setting, checkpoint, modalities in reference_checkpoints(cfg).values():
        try:
            card = model_card(checkpoint)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{setting} {checkpoint}: {exc}") from None
        missing = [m for m in modalities if m not in card["modalities"]]
        if missing:
            raise ValueError(
                f"{setting} {checkpoint}: has no {missing} encoder (it embeds "
                f"{card['modalities']}, the run trains {modalities}); give a checkpoint with "
                "every one, or train fewer modalities"
            )
        for s in sources:
            if is_webdataset(s.manifest):
                raise ValueError(f"{setting}: {s.path} is webdataset tars; ingest it first")


def embed_references(cfg: Config, sources: list[DataSource], actors: int = 1) -> dict[str, Any]:
    """role -> object ref of its Table over every source's train and val values."""
    import ray

    from polymodal.inference.model import model_card
    from polymodal.inference.offline import column_vectors, embedded_split

    refs: dict[str, Any] = {}
    tables: dict[tuple[str, ...], Any] = {}  # a checkpoint in two roles is embedded once
    for role, (setting, checkpoint, modalities) in reference_checkpoints(cfg).items():
        key = (checkpoint, *modalities)
        if key in tables:
            print(f"{setting}: the embeddings of {checkpoint} above", flush=True)
            refs[role] = tables[key]
            continue
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in modalities}
        dim = model_card(checkpoint)["dimension"]
        rows = sum(s.manifest.rows(sp) for s in sources for sp in ("train", "val"))
        print(f"{setting}: embedding {rows:,} rows with {checkpoint}", flush=True)
        for s in sources:
            held = [m for m in modalities if m in s.manifest.modalities]
            splits = tuple(sp for sp in ("train", "val") if s.manifest.rows(sp))
            if not held or not splits:
                continue
            # both splits in one pass: each pass starts the embedding actors anew
            ds = embedded_split(checkpoint, s.path, splits, held, actors=actors, hashes=True)
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                assert isinstance(batch, pa.Table)  # Ray types a batch as any format
                for m in held:
                    vectors, present = column_vectors(batch, f"{m}_embedding", dim)
                    hashes = batch.column(f"{m}_hash").to_numpy()
                    parts[m].append((hashes[present], vectors[present]))
        table = {m: _table(p) for m, p in parts.items() if sum(len(h) for h, _ in p)}
        check_negatives(setting, sources, table)
        refs[role] = tables[key] = ray.put(table)
    return refs


def _table(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One modality's (unique sorted hashes, their embeddings): equal values embed equally."""
    hashes = np.concatenate([h for h, _ in parts])
    vectors = np.concatenate([v for _, v in parts])
    unique, first = np.unique(hashes, return_index=True)
    return unique, np.ascontiguousarray(vectors[first])


def check_negatives(setting: str, sources: list[DataSource], table: Table) -> None:
    """Every mined negative (polymodal mine, by value) is a value of the data, so the
    reference model has its embedding: a dataset edited after mining is refused here, with
    the row and the direction, instead of failing a worker mid-epoch."""
    from polymodal.data.decode import NEGATIVES_PREFIX, content_hash
    from polymodal.data.format import open_shard, shard_paths

    for s in sources:
        for key in mined(s.manifest):
            modality = split_direction(key)[1]
            if modality not in table:
                continue
            known = table[modality][0]
            column = NEGATIVES_PREFIX + key
            for uri in shard_paths(s.path, s.manifest, "train"):
                t = open_shard(uri).read(columns=["id", column])
                for row_id, values in zip(t.column("id").to_pylist(), t.column(1).to_pylist()):
                    hashes = [content_hash(v) for v in values or [] if v is not None]
                    at = np.searchsorted(known, hashes)
                    if any(i >= len(known) or known[i] != h for i, h in zip(at, hashes)):
                        raise ReferenceError(
                            f"{s.path}: row {row_id!r}: a mined negative of {key} is no "
                            f"{modality} value of the dataset (rows changed since `polymodal "
                            f"mine`), so {setting} cannot score it; mine "
                            "the dataset again"
                        )


def _lookup(table: tuple[np.ndarray, np.ndarray], hashes: np.ndarray, present: np.ndarray):
    """(embeddings [n, D], found [n]) of the present values' hashes; None: one is missing."""
    known, vectors = table
    at = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
    found = (known[at] == hashes) & present
    if (present & ~found).any():
        return None
    out = vectors[at]
    out[~found] = 0.0
    return out, found


class References:
    """Attaches every reference model's embeddings of a batch's values (Batch.reference)."""

    def __init__(self, tables: dict[str, Table]):
        self.tables = tables

    @classmethod
    def from_refs(cls, refs: dict[str, Any]) -> References:
        import ray

        # Zero-copy from the node's object store: one copy per node, not per worker.
        return cls({role: ray.get(ref) for role, ref in refs.items()})

    def __call__(self, batch: Batch) -> Batch:
        import torch

        reference: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        wanted = [(m, batch.hashes.get(m), batch.present[m]) for m in batch.present]
        wanted += [(k, h, batch.negatives_present[k]) for k, h in batch.negatives_hashes.items()]
        for role, table in self.tables.items():
            for name, hashes, flags in wanted:
                modality = split_direction(name)[1] if "->" in name else name
                if modality not in table:
                    continue
                if hashes is None:
                    raise ValueError("reference embeddings need the batch's content hashes")
                h, p = hashes.cpu().numpy(), flags.cpu().numpy() > 0
                found = _lookup(table[modality], h.reshape(-1), p.reshape(-1))
                if found is None:
                    raise ReferenceError(
                        f"{role}: a {name} value of this batch was not in the data when the "
                        "run embedded it: the dataset changed during the run"
                    )
                emb, ok = found
                key = reference_key(role, name)
                device = flags.device
                reference[key] = torch.from_numpy(emb.reshape(*h.shape, -1)).to(device)
                present[key] = torch.from_numpy(ok.reshape(h.shape)).to(device)
        return dataclasses.replace(batch, reference=reference, reference_present=present)
