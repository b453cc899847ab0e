"""CLIP_benchmark's webdataset layout (classnames.txt, zeroshot_classification_templates.txt,
dataset_type.txt, {split}/nshards.txt, {split}/N.tar), local or s3://: read and written.

A sample is `KEY.png|jpg|webp` with `KEY.cls` (classification: the class's line number in
classnames.txt) or `KEY.txt` (retrieval: one caption per line). Templates name the class `{c}`;
polymodal's prompts name it `{}`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from polymodal import storage
from polymodal.data.format import DatasetError
from polymodal.data.tars import IMAGE_EXTS, iter_samples

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
KIND = "dataset_type.txt"
KINDS = ("zeroshot_classification", "zeroshot_retrieval")


@dataclass
class Sample:
    key: str
    image: bytes
    image_ext: str  # png | jpg | webp
    label: int | None = None  # classification
    captions: list[str] | None = None  # retrieval


@dataclass
class Layout:
    root: str
    kind: str  # one of KINDS, clip_benchmark's task
    classnames: list[str]
    templates: list[str]  # polymodal's form: "a photo of a {}."

    @property
    def name(self) -> str:
        """The name clip_benchmark gives it: wds/<directory>."""
        return "wds/" + str(self.root).rstrip("/").rsplit("/", 1)[-1]

    def splits(self) -> list[str]:
        return [
            d
            for d in storage.list_dirs(self.root)
            if storage.is_file(storage.join(self.root, d, "nshards.txt"))
        ]

    def shards(self, split: str) -> list[str]:
        count = storage.join(self.root, split, "nshards.txt")
        if not storage.is_file(count):
            have = ", ".join(self.splits()) or "none"
            raise DatasetError(f"{count}: no such split in {self.root} (splits: {have})")
        text = storage.read_bytes(count).decode().strip()
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(f"{count}: expected a positive number of shards, got {text!r}")
        return [storage.join(self.root, split, f"{i}.tar") for i in range(int(text))]

    def samples(self, split: str) -> Iterator[Sample]:
        """The split's samples in shard order."""
        for uri in self.shards(split):
            yield from self.shard_samples(uri)

    def shard_samples(self, uri: str) -> Iterator[Sample]:
        """One tar's samples; DatasetError naming the shard and key of a bad one."""
        for key, files in iter_samples(uri):
            ext = next((e for e in IMAGE_EXTS if e in files), None)
            if ext is None:
                raise DatasetError(f"{uri}: sample {key!r} has no image ({sorted(files)})")
            sample = Sample(key, files[ext], ext)
            if self.kind == "zeroshot_retrieval":
                if "txt" not in files:
                    raise DatasetError(f"{uri}: retrieval sample {key!r} has no .txt")
                sample.captions = files["txt"].decode("utf-8").splitlines()
            else:
                sample.label = _label(files.get("cls"), len(self.classnames), uri, key)
            yield sample


def _label(data: bytes | None, classes: int, uri: str, key: str) -> int:
    text = (data or b"").decode("utf-8", errors="replace").strip()
    if not text.lstrip("-").isdigit() or not 0 <= int(text) < classes:
        raise DatasetError(
            f"{uri}: sample {key!r}: .cls {text!r} is not a class in 0..{classes - 1}"
        )
    return int(text)


def _lines(uri: str) -> list[str]:
    return [line.strip() for line in storage.read_bytes(uri).decode("utf-8").splitlines()]


def is_layout(root: str) -> bool:
    return any(storage.is_file(storage.join(root, f)) for f in (CLASSNAMES, KIND))


def read_layout(root: str) -> Layout:
    """The dataset at root; DatasetError naming the missing or malformed file."""
    root = str(root).rstrip("/")
    if not storage.exists(root):
        raise FileNotFoundError(f"{root}: no such CLIP_benchmark dataset directory")
    kind = "zeroshot_classification"
    if storage.is_file(storage.join(root, KIND)):
        text = storage.read_bytes(storage.join(root, KIND)).decode().strip()
        if text not in ("", "retrieval"):  # multilabel: not read yet
            raise DatasetError(f"{storage.join(root, KIND)}: {text!r}; polymodal reads retrieval")
        kind = "zeroshot_retrieval" if text else kind
    classnames: list[str] = []
    templates: list[str] = []
    if kind == "zeroshot_classification":
        for file in (CLASSNAMES, TEMPLATES):
            if not storage.is_file(storage.join(root, file)):
                raise DatasetError(f"{root}: no {file} (zero-shot classification needs it)")
        classnames = [c for c in _lines(storage.join(root, CLASSNAMES)) if c]
        templates = [t.replace("{c}", "{}") for t in _lines(storage.join(root, TEMPLATES)) if t]
        bad = next((t for t in templates if "{}" not in t), None)
        if bad is not None:
            raise DatasetError(f"{storage.join(root, TEMPLATES)}: template {bad!r} has no {{c}}")
    return Layout(root, kind, classnames, templates)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_layout(
    out: str,
    kind: str,
    samples: Iterable[Sample],
    split: str = "test",
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
    shard_samples: int = 10_000,
) -> int:
    """Write samples as a CLIP_benchmark dataset at out (local or s3://); nshards.txt last, so
    an interrupted export is no dataset. Returns the samples written."""
    if kind == "zeroshot_classification":
        storage.write_bytes(storage.join(out, CLASSNAMES), "\n".join(classnames or []).encode())
        lines = [t.replace("{}", "{c}") for t in templates or []]
        storage.write_bytes(storage.join(out, TEMPLATES), "\n".join(lines).encode())
    else:
        storage.write_bytes(storage.join(out, KIND), b"retrieval")
    shards, count = 0, 0
    buf: io.BytesIO | None = None
    tar: tarfile.TarFile | None = None

    def flush() -> None:
        nonlocal shards, buf, tar
        assert tar is not None and buf is not None
        tar.close()
        storage.write_bytes(storage.join(out, split, f"{shards}.tar"), buf.getvalue())
        shards, buf, tar = shards + 1, None, None

    for sample in samples:
        if tar is None:
            buf = io.BytesIO()
            tar = tarfile.open(fileobj=buf, mode="w")
        key = f"s{count:07d}"
        _tar_member(tar, f"{key}.{sample.image_ext}", sample.image)
        if kind == "zeroshot_classification":
            _tar_member(tar, f"{key}.cls", str(sample.label).encode())
        else:
            # One caption per line: a caption's own line breaks become spaces.
            captions = [" ".join(c.split()) for c in sample.captions or []]
            _tar_member(tar, f"{key}.txt", "\n".join(captions).encode())
        count += 1
        if count % shard_samples == 0:
            flush()
    if tar is not None:
        flush()
    if count == 0:
        raise DatasetError(f"{out}: no samples to write for split {split!r}")
    storage.write_bytes(storage.join(out, split, "nshards.txt"), str(shards).encode())
    return count


def _image_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def export_dataset(
    dataset: str, out: str, split: str = "val", kind: str = "auto", templates: tuple[str, ...] = ()
) -> dict:
    """A polymodal dataset's split as a CLIP_benchmark dataset at out (its split "test"):
    classification when the rows have named labels (kind auto), else retrieval (each image
    with its row's caption). Rows without an image (or, for retrieval, a caption) are left out
    and counted."""
    from polymodal.data.dataset import iter_tables
    from polymodal.data.format import read_manifest

    manifest = read_manifest(dataset)
    if kind == "auto":
        kind = "zeroshot_classification" if manifest.label_names else "zeroshot_retrieval"
    need = ["image", "label"] if kind == "zeroshot_classification" else ["image", "text"]
    missing = [c for c in need if c != "label" and c not in manifest.modalities]
    if kind == "zeroshot_classification" and not manifest.label_names:
        missing.append("named labels")
    if missing:
        raise DatasetError(f"{dataset}: a {kind} export needs {' and '.join(missing)}")
    prompts = list(templates) or manifest.extra.get("caption_templates") or ["{}"]
    skipped = 0

    def samples() -> Iterator[Sample]:
        nonlocal skipped
        for table in iter_tables(dataset, split, need, 1024, manifest):
            for row in table.to_pylist():
                value = row.get("label") if kind == "zeroshot_classification" else row.get("text")
                if (
                    row["image"] is None
                    or value is None
                    or (kind == "zeroshot_classification" and value < 0)
                ):
                    skipped += 1
                    continue
                image = bytes(row["image"])
                if kind == "zeroshot_classification":
                    yield Sample("", image, _image_ext(image), label=int(value))
                else:
                    yield Sample("", image, _image_ext(image), captions=[value])

    written = write_layout(out, kind, samples(), "test", manifest.label_names, prompts)
    return {"out": out, "task": kind, "split": split, "samples": written, "skipped": skipped}
