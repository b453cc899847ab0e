"""Webdataset tar shards as img2dataset writes them (`key.jpg|png|webp`, `key.txt`, `key.json`,
`key.cls`), local or s3://, named by brace patterns like `shards/{00000..00099}.tar`.

Plain tarfile + pyarrow, no Ray: ingest, the Ray Data pipeline and evaluation all read through
these functions. Tars are streamed, never loaded whole.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from polymodal import storage
from polymodal.data.format import DatasetError, Manifest

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# `label` stays the .cls text: decoding parses it, so a non-integer counts as a bad row.
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("text", pa.string()),
        pa.field("label", pa.string()),
    ]
)
_BRACE = re.compile(r"\{([^{}]*)\}")


def is_webdataset_path(path: str) -> bool:
    return str(path).rstrip("/").endswith(".tar") or ".tar::" in str(path)


def expand(pattern: str) -> list[str]:
    """`a/{000..002}.tar` → a/000.tar, a/001.tar, a/002.tar; `{x,y}` lists; several patterns
    joined by `::` (webdataset's separator)."""
    out: list[str] = []
    for part in str(pattern).split("::"):
        match = _BRACE.search(part)
        if not match:
            out.append(part)
            continue
        body = match.group(1)
        if ".." in body:
            lo, hi = body.split("..", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise DatasetError(f"{pattern}: bad range {{{body}}}")
            width = len(lo) if lo.startswith("0") else 0
            choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            choices = body.split(",")
        head, tail = part[: match.start()], part[match.end() :]
        out += [u for c in choices for u in expand(head + c + tail)]
    return out


def shard_uris(pattern: str) -> list[str]:
    """The tars a pattern names; DatasetError naming the first that is not there."""
    uris = expand(pattern)
    missing = [u for u in uris if not storage.is_file(u)]
    if missing:
        raise DatasetError(f"{missing[0]}: webdataset shard not found ({pattern})")
    return uris


def _split_name(name: str) -> tuple[str, str]:
    """`dir/000123.jpg` → ("dir/000123", "jpg"): the key runs to the basename's first dot."""
    base = name.rsplit("/", 1)[-1]
    stem, _, ext = base.partition(".")
    return name[: len(name) - len(base)] + stem, ext.lower()


def iter_samples(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample, in tar order (a sample's files are adjacent)."""
    fs, path = storage.resolve(uri)
    try:
        stream = fs.open_input_stream(path)
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot open webdataset shard ({exc})") from exc
    with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            for member in tar:
                if not member.isfile() or member.name.startswith("__"):
                    continue
                k, ext = _split_name(member.name)
                if k != key and files:
                    assert key is not None  # files holds key's files
                    yield key, files
                    files = {}
                key = k
                data = tar.extractfile(member)
                assert data is not None  # None only for members that are not files
                files[ext] = data.read()
        except tarfile.TarError as exc:
            raise DatasetError(f"{uri}: damaged tar after sample {key!r} ({exc})") from exc
        if files:
            assert key is not None
            yield key, files


def sample_row(key: str, files: dict[str, bytes]) -> dict[str, str | bytes | None]:
    """One sample → a row of SCHEMA (None where the sample lacks a modality)."""
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    text = None
    if "txt" in files:
        text = files["txt"].decode("utf-8", errors="replace")
    elif "json" in files:  # img2dataset also puts the caption in the sample's json
        try:
            meta = json.loads(files["json"])
            text = meta.get("caption") if isinstance(meta, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = None
    label = files["cls"].decode("utf-8", errors="replace").strip() if "cls" in files else None
    return {"id": key, "image": image, "text": text, "label": label}


def read_tables(uris: list[str], rows_per_table: int = 1024) -> Iterator[pa.Table]:
    """The shards' samples as tables of SCHEMA, rows_per_table at a time."""
    for uri in uris:
        rows: list[dict] = []
        for key, files in iter_samples(uri):
            rows.append(sample_row(key, files))
            if len(rows) >= rows_per_table:
                yield pa.Table.from_pylist(rows, schema=SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)


def shard_summary(uri: str) -> tuple[int, set[str]]:
    """(samples, file extensions seen). img2dataset's `<shard>_stats.json` gives the count
    without reading the shard; otherwise the tar is streamed once, headers only."""
    stats = uri[: -len(".tar")] + "_stats.json"
    if storage.is_file(stats):
        try:
            count = int(json.loads(storage.read_bytes(stats))["successes"])
            first = next(iter_samples(uri), None)
            return count, set(first[1]) if first else set()
        except (KeyError, ValueError, TypeError):
            pass  # not img2dataset's format: count ourselves
    exts: set[str] = set()
    count = 0
    for _, files in iter_samples(uri):
        count += 1
        exts |= set(files)
    return count, exts


@functools.lru_cache(maxsize=8)  # the driver asks more than once per run; counting reads tars
def webdataset_manifest(
    train: str, val: str, label_names: tuple[str, ...] = (), image_channels: int = 3
) -> Manifest:
    """A Manifest for tar shards read in place: train and val are patterns; shard paths are
    full URIs. Modalities come from the extensions found; `.cls` labels are used when
    label_names names the classes."""
    if not val:
        raise DatasetError(f"{train}: webdataset training needs data.val_path (val shards)")
    splits, exts = {}, set()
    for split, pattern in (("train", train), ("val", val)):
        uris = shard_uris(pattern)
        with ThreadPoolExecutor(max_workers=16) as pool:
            summaries = list(pool.map(shard_summary, uris))
        shards = [{"path": u, "rows": n} for u, (n, _) in zip(uris, summaries)]
        exts |= set(itertools.chain.from_iterable(e for _, e in summaries))
        splits[split] = {"rows": sum(n for n, _ in summaries), "shards": shards}
    modalities = {}
    if exts & set(IMAGE_EXTS):
        modalities["image"] = {"encoding": "|".join(sorted(exts & set(IMAGE_EXTS)))}
    if exts & {"txt", "json"}:
        modalities["text"] = {"encoding": "utf-8"}
    return Manifest(
        modalities=modalities,
        label_names=list(label_names) if label_names and "cls" in exts else None,
        splits=splits,
        source=f"webdataset:{train}",
        extra={"format": "webdataset", "image_channels": image_channels},
    )
