"""Mining hard negatives (`polymodal mine`): each train row's anchor embedded with a checkpoint,
searched exactly against every row's candidate, K picked in a rank window and written by value."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polymodal.batch import direction
from polymodal.data.format import (
    MANIFEST,
    DatasetError,
    DatasetWriter,
    Manifest,
    is_webdataset,
    mined,
    negatives_column,
    open_shard,
    read_manifest,
    shard_paths,
)
from polymodal.inference.model import model_card
from polymodal.inference.offline import column_vectors, embedded_split
from polymodal.retrieval.index import Index, Shard
from polymodal.retrieval.search import search_rows

QUERY_ROWS = 1024  # anchors searched at once: their scores per candidate chunk stay bounded


@dataclass
class MineSettings:
    """Which negatives a row gets: ranks [range_min, range_max) of the candidates by score
    (0 the best; the row's own value and same-content ones are no candidates), then dropped
    when above max_score, within margin of the positive's score (absolute, or relative: at
    or above positive × (1 − relative_margin)), or of the row's label."""

    anchor: str
    candidates: str
    num_negatives: int
    range_min: int = 0
    range_max: int = 100
    max_score: float | None = None
    margin: float | None = None
    relative_margin: float | None = None
    exclude_same_label: bool = False


@dataclass
class MineReport:
    out: str
    rows: int  # train rows
    mined: int  # rows given at least one negative
    negatives: int
    positive_score: float  # mean over rows with both anchor and candidate
    negative_score: float
    seconds: float


def check_mine_inputs(
    checkpoint: str, dataset: str, out: str, s: MineSettings, overwrite: bool = False
) -> Manifest:
    """The dataset's manifest, or one line naming the flag or file at fault: before Ray."""
    if s.num_negatives < 1:
        raise ValueError(f"--num-negatives {s.num_negatives}: must be >= 1")
    if not 0 <= s.range_min < s.range_max:
        raise ValueError(
            f"--range-min {s.range_min} --range-max {s.range_max}: need 0 <= min < max"
        )
    if s.relative_margin is not None and not 0 <= s.relative_margin < 1:
        raise ValueError(f"--relative-margin {s.relative_margin}: must be in [0, 1)")
    if s.anchor == s.candidates:
        raise ValueError(f"--anchor and --candidates are both {s.anchor}: give two modalities")
    card = model_card(checkpoint)
    manifest = read_manifest(dataset)
    for flag, m in (("--anchor", s.anchor), ("--candidates", s.candidates)):
        if m not in card["modalities"]:
            raise ValueError(f"{flag} {m}: {checkpoint} has no {m} encoder ({card['modalities']})")
        if m not in manifest.modalities:
            raise DatasetError(
                f"{flag} {m}: {dataset} has no {m} column ({list(manifest.modalities)})"
            )
    if is_webdataset(manifest):
        raise DatasetError(f"{dataset}: webdataset tars read in place; ingest them to mine")
    if manifest.rows("train") == 0:
        raise DatasetError(f"{dataset}: no train rows to mine")
    if s.exclude_same_label and manifest.label_names is None:
        raise ValueError(f"--exclude-same-label: {dataset} has no labels")
    from polymodal import storage

    reusable = (lambda names: MANIFEST in names) if overwrite else (lambda names: True)
    inputs = {"the dataset": dataset, "the checkpoint": checkpoint}
    storage.check_output_dir(out, "OUT", inputs, reusable)
    exists = storage.exists(storage.join(out, MANIFEST)) if storage.is_remote(out) else None
    if (exists or (exists is None and Path(out).exists())) and not overwrite:
        raise FileExistsError(f"OUT {out}: already exists; pass --overwrite to replace it")
    return manifest


def _train_columns(dataset: str, manifest: Manifest, columns: list[str]):
    """The train split's tables of `columns`, a row group at a time (bounded memory)."""
    for uri in shard_paths(dataset, manifest, "train"):
        file = open_shard(uri)
        for g in range(file.metadata.num_row_groups):
            yield file.read_row_group(g, columns=columns)


def _pick(
    cand_rows: np.ndarray, scores: np.ndarray, row: int, hashes, labels, s: MineSettings, pos
) -> list[int]:
    """Row `row`'s negatives: dataset rows (sorted-id positions) in rank order."""
    ranked = [
        (c, sc)
        for c, sc in zip(cand_rows, scores)
        if c != row and (hashes[row] == 0 or hashes[c] != hashes[row]) and np.isfinite(sc)
    ]
    picked = []
    for c, sc in ranked[s.range_min : s.range_max]:
        if s.max_score is not None and sc > s.max_score:
            continue
        if s.margin is not None and not (np.isfinite(pos) and sc < pos - s.margin):
            continue
        if s.relative_margin is not None and not (
            np.isfinite(pos) and sc < pos * (1 - s.relative_margin)
        ):
            continue
        if s.exclude_same_label and labels[row] >= 0 and labels[c] == labels[row]:
            continue
        picked.append(int(c))
        if len(picked) == s.num_negatives:
            break
    return picked


def mine_negatives(
    checkpoint: str,
    dataset: str,
    s: MineSettings,
    batch_size: int = 256,
    num_cpus: float = 1.0,
    actors: int = 1,
) -> tuple[list[str], dict[str, list[int]], np.ndarray, list[float]]:
    """(train ids sorted, id -> its negatives' positions in them, positive scores, negative
    scores). Rows sorted by id, so ranks and ties do not depend on Ray's order."""
    dim = model_card(checkpoint)["dimension"]
    # With the candidates' content hashes (same content: no negative), from the same read.
    ds = embedded_split(
        checkpoint, dataset, "train", [s.anchor, s.candidates], batch_size, num_cpus, actors, True
    )
    ids: list[str] = []
    parts: list[tuple] = []
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(table, pa.Table)  # Ray types a batch as any of its formats
        ids += table.column("id").to_pylist()
        label = table.column("label").fill_null(-1) if "label" in table.column_names else None
        labels = label.to_numpy() if label is not None else np.full(table.num_rows, -1)
        parts.append(
            (*column_vectors(table, f"{s.anchor}_embedding", dim), labels)
            + column_vectors(table, f"{s.candidates}_embedding", dim)
            + (table.column(f"{s.candidates}_hash").to_numpy(),)
        )
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    ids = [ids[i] for i in order]
    anchors, has_anchor, labels, cands, has_cand, hashes = (
        np.concatenate(p)[order] for p in zip(*parts)
    )
    cand_rows = np.flatnonzero(has_cand)
    positive = np.where(has_anchor & has_cand, (anchors * cands).sum(axis=1), np.nan)
    chosen: dict[str, list[int]] = {}
    negative_scores: list[float] = []
    if not len(cand_rows):
        return ids, chosen, positive, negative_scores
    # Exact search over the candidates in memory, chunked as `polymodal index`'s search is.
    index = Index(
        "(train candidates)",
        {"dim": dim, "rows": len(cand_rows), "model": checkpoint, "modality": s.candidates},
        [Shard(cands[cand_rows], np.array([ids[i] for i in cand_rows], dtype=bytes), None)],
    )
    # Enough ranks that the window survives excluding the row's own and same-content values.
    _, dups = np.unique(hashes[cand_rows], return_counts=True)
    k = min(s.range_max + int(dups.max()), len(cand_rows))
    queries = np.flatnonzero(has_anchor)
    for lo in range(0, len(queries), QUERY_ROWS):
        rows = queries[lo : lo + QUERY_ROWS]
        found, scores = search_rows(index, anchors[rows], k)
        for row, f, sc in zip(rows, found, scores):
            picked = _pick(cand_rows[f], sc, row, hashes, labels, s, positive[row])
            if picked:
                chosen[ids[row]] = picked
                score = dict(zip(cand_rows[f].tolist(), sc.tolist()))
                negative_scores += [score[c] for c in picked]
    return ids, chosen, positive, negative_scores


def mine(
    checkpoint: str,
    dataset: str,
    out: str,
    s: MineSettings,
    overwrite: bool = False,
    batch_size: int = 256,
    num_cpus: float = 1.0,
    actors: int = 1,
) -> MineReport:
    """Write OUT: DATASET's rows with each train row's negatives (column
    negatives.<anchor>-><candidates>, by value), val copied with none; manifest last."""
    start = time.perf_counter()
    manifest = check_mine_inputs(checkpoint, dataset, out, s, overwrite)
    key = direction(s.anchor, s.candidates)
    negatives = {k: d["modality"] for k, d in mined(manifest).items()} | {key: s.candidates}
    shard_rows = max(x["rows"] for sp in manifest.splits.values() for x in sp["shards"])
    writer = DatasetWriter(
        out,
        list(manifest.modalities),
        {m: d["encoding"] for m, d in manifest.modalities.items()},
        manifest.label_names,
        manifest.label_names is not None,
        rows_per_shard=max(shard_rows, 1),
        overwrite=overwrite,
        negatives=negatives,
    )
    try:
        ids, chosen, positive, negative_scores = mine_negatives(
            checkpoint, dataset, s, batch_size, num_cpus, actors
        )
        # The chosen candidates' raw values, read once: only those, never the whole split.
        wanted = {ids[c] for picked in chosen.values() for c in picked}
        values: dict[str, Any] = {}
        for table in _train_columns(dataset, manifest, ["id", s.candidates]):
            for row_id, value in zip(table.column("id").to_pylist(), table.column(1).to_pylist()):
                if row_id in wanted:
                    values[row_id] = value
        column = negatives_column(key)
        for split in manifest.splits:
            for uri in shard_paths(dataset, manifest, split):
                for row in open_shard(uri).read().to_pylist():
                    picked = chosen.get(row["id"]) if split == "train" else None
                    row[column] = [values[ids[c]] for c in picked] if picked else None
                    writer.add(split, row)
        info = asdict(s)  # every setting, the candidates' modality under its manifest name
        info["modality"] = info.pop("candidates")
        info |= {"mined_from": str(dataset), "checkpoint": str(checkpoint), "split": "train"}
        extra = dict(manifest.extra) | {"negatives": mined(manifest) | {key: info}}
        writer.finish(manifest.source, extra, dict(manifest.rejected))
    except BaseException:
        writer.abort()
        raise
    return MineReport(
        out=str(out),
        rows=len(ids),
        mined=len(chosen),
        negatives=len(negative_scores),
        positive_score=float(np.nanmean(positive)) if np.isfinite(positive).any() else 0.0,
        negative_score=float(np.mean(negative_scores)) if negative_scores else 0.0,
        seconds=time.perf_counter() - start,
    )
