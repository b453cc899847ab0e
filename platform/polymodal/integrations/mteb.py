"""A polymodal model as an mteb model (MTEB, MIEB, MAEB: text, image and audio inputs as mteb
batches them), mteb tasks built from a polymodal dataset's rows, and `mteb.evaluate` over both.

Task specs: an mteb task name (its data comes from the Hugging Face hub or its cache), or one
built from a dataset split: `retrieval:A->B` (A's rows query B's, deduplicated by content),
`probe:M` (mteb's Classification: a logistic-regression linear probe on M's embeddings,
fitted on the train split) and `zeroshot:M` (M against one prompt per class name).
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.data.dataset import iter_tables
from polymodal.data.format import read_columns, read_manifest
from polymodal.inference.model import LoadedModel
from polymodal.modalities.image import open_image

if TYPE_CHECKING:
    from mteb.abstasks import AbsTask

CATEGORY = {"text": "t", "image": "i", "audio": "a"}  # mteb's letters in "t2i", "i2c"
KINDS = ("retrieval", "probe", "zeroshot")


def _wav(item: dict) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(item["array"], np.float32), int(item["sampling_rate"]), format="WAV")
    return buf.getvalue()


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Encoder:
    """mteb's EncoderProtocol over a loaded checkpoint. An item with several modalities (an
    image and its caption) gets the normalised sum of their embeddings; query and document
    texts get the prompts (eval.query_prompt, eval.document_prompt)."""

    def __init__(self, model: LoadedModel, name: str, revision: str, prompts: dict[str, str]):
        from mteb.models import ModelMeta

        self.model, self.prompts = model, prompts
        prep = model.prep
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=name if "/" in name else f"polymodal/{name}",
            revision=revision,
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in model.model.parameters()),
            memory_usage_mb=None,
            max_tokens=prep.text_max_len if "text" in prep.modalities else None,
            embed_dim=model.model.embed_dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            reference=None,
            similarity_fn_name="cosine",
            use_instructions=False,
            training_datasets=None,
            modalities=[m for m in prep.modalities if m in CATEGORY],
        )

    def _values(self, modality: str, values: list, prompt_type) -> list:
        if modality == "image":
            return [_png(v.convert("RGB")) for v in values]
        if modality == "audio":
            return [_wav(v) for v in values]
        prompt = self.prompts.get(str(getattr(prompt_type, "value", prompt_type)), "")
        return [prompt + v for v in values]

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None,
               prompt_type=None, **kwargs) -> np.ndarray:  # fmt: skip
        out = []
        for batch in inputs:
            total = None
            for m in CATEGORY:
                values = list(batch.get(m) or [])
                rows = [i for i, v in enumerate(values) if v is not None]
                if not rows:
                    continue
                if m not in self.model.prep.modalities:
                    raise ValueError(f"{task_metadata.name}: the model has no {m} encoder")
                given = self._values(m, [values[i] for i in rows], prompt_type)
                emb = torch.zeros(len(values), self.model.model.embed_dim)
                emb[rows] = torch.from_numpy(self.model.embed(m, given))
                total = emb if total is None else total + emb
            if total is None or not total.norm(dim=-1).all():
                raise ValueError(f"an item of {task_metadata.name} has none of {list(CATEGORY)}")
            out.append(F.normalize(total, dim=-1).numpy())
        return np.concatenate(out)

    def similarity(self, a, b) -> torch.Tensor:
        a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()

    def similarity_pairwise(self, a, b) -> torch.Tensor:
        a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def _metadata(name: str, kind: str, category: str, modalities: list[str], split: str, path: str):
    from mteb.abstasks.task_metadata import TaskMetadata

    types = {
        "retrieval": "Retrieval" if category == "t2t" else "Any2AnyRetrieval",
        "probe": "Classification" if category == "t2c" else "ImageClassification",
        "zeroshot": "ZeroShotClassification",
    }
    if kind == "probe" and category == "a2c":
        types["probe"] = "AudioClassification"
    return TaskMetadata(
        name=name,
        description=f"{kind} on the {split} rows of {path} (polymodal dataset)",
        dataset={"path": str(path), "revision": "local"},
        type=types[kind],
        category=category,
        modalities=modalities,
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10" if kind == "retrieval" else "accuracy",
    )


def _rows(path: str, split: str, columns: list[str]) -> list[dict]:
    manifest = read_manifest(path)
    have = read_columns(path, manifest, [c for c in columns if c != "label"], False)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column for this mteb task")
    classes = range(manifest.num_labels or 0)
    mods = [c for c in columns if c != "label"]
    rows = []
    for t in iter_tables(path, split, columns, 1024, manifest):
        for raw in t.to_pylist():
            # Rows training would drop as bad (no value, blank text, undecodable, label out of
            # range) are left out here too.
            if "label" in columns and raw["label"] not in classes:
                continue
            try:
                values = {m: _value(m, raw[m]) for m in mods}
            except Exception:  # any decoder's failure: a bad row
                continue
            if any(v is None or (m == "text" and not v.strip()) for m, v in values.items()):
                continue
            keys = {f"key:{m}": _key(raw[m]) for m in mods}
            rows.append({**values, **keys, "label": raw.get("label")})
    if not rows:
        raise ValueError(f"{path}: split {split!r} has no usable rows for {columns}")
    return rows


def _value(modality: str, raw):
    """A stored value as mteb hands it to models: PIL images, {"array", "sampling_rate"}."""
    if raw is None or modality == "text":
        return raw
    if modality == "image":
        return open_image(raw)  # pixels bounded before decoding
    import soundfile as sf

    array, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    return {"array": array.mean(1).tolist(), "sampling_rate": rate}


def _key(raw) -> str:
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    return hashlib.sha1(data).hexdigest()[:16]


def dataset_task(spec: str, path: str, split: str, templates: list[str]) -> AbsTask:
    """The mteb task `spec` (module docstring) over `split` of the polymodal dataset at path."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks import (
        AbsTaskClassification,
        AbsTaskRetrieval,
        AbsTaskZeroShotClassification,
    )

    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(
            f"--mteb {spec}: kinds are {', '.join(KINDS)} (e.g. retrieval:text->image)"
        )
    parts = arg.split("->") if kind == "retrieval" else [arg]
    if len(parts) != (2 if kind == "retrieval" else 1) or not all(p in CATEGORY for p in parts):
        raise ValueError(f"--mteb {spec}: name modalities among {', '.join(CATEGORY)}")
    data = str(path).rstrip("/").rsplit("/", 1)[-1]
    name = f"{data}-{kind}-{'2'.join(parts)}"
    if kind == "retrieval":
        a, b = parts
        category = f"{CATEGORY[a]}2{CATEGORY[b]}"
        rows = _rows(path, split, [a, b])
        queries = {f"q{i}": r[a] for i, r in enumerate(rows)}
        corpus = {r[f"key:{b}"]: r[b] for r in rows}  # each content once
        relevant = {f"q{i}": {r[f"key:{b}"]: 1} for i, r in enumerate(rows)}

        class Task(AbsTaskRetrieval):
            metadata = _metadata(name, kind, category, sorted({a, b}), split, path)

            def load_data(self, num_proc=None, **kw) -> None:
                q = {"id": list(queries), a: list(queries.values())}
                c = {"id": list(corpus), b: list(corpus.values())}
                self.dataset = {
                    "default": {
                        split: {
                            "queries": Dataset.from_dict(q),
                            "corpus": Dataset.from_dict(c),
                            "relevant_docs": relevant,
                            "top_ranked": None,
                        }
                    }
                }
                self.data_loaded = True

        return Task()
    (m,) = parts
    if kind == "probe":

        class Probe(AbsTaskClassification):
            metadata = _metadata(name, kind, f"{CATEGORY[m]}2c", [m], split, path)
            input_column_name = m

            def load_data(self, num_proc=None, **kw) -> None:
                def part(s: str) -> Dataset:
                    rows = _rows(path, s, [m, "label"])
                    return Dataset.from_dict(
                        {m: [r[m] for r in rows], "label": [r["label"] for r in rows]}
                    )

                self.dataset = DatasetDict({"train": part("train"), split: part(split)})
                self.data_loaded = True

        return Probe()
    labels = read_manifest(path).label_names or []
    if not labels:
        raise ValueError(f"--mteb {spec}: {path} has no label names to prompt with")
    template = (templates or ["{}"])[0]

    class ZeroShot(AbsTaskZeroShotClassification):
        metadata = _metadata(name, kind, f"{CATEGORY[m]}2t", sorted({m, "text"}), split, path)
        input_column_name = m

        def get_candidate_labels(self) -> list[str]:
            return [template.format(c) for c in labels]

        def load_data(self, num_proc=None, **kw) -> None:
            rows = _rows(path, split, [m, "label"])
            self.dataset = DatasetDict(
                {
                    split: Dataset.from_dict(
                        {m: [r[m] for r in rows], "label": [r["label"] for r in rows]}
                    )
                }  # fmt: skip
            )
            self.data_loaded = True

    return ZeroShot()


def tasks_for(specs: list[str], path: str, split: str, templates: list[str]) -> list:
    """Built tasks for `kind:...` specs, mteb's own for names."""
    import mteb

    named = [s for s in specs if ":" not in s]
    try:
        tasks = list(mteb.get_tasks(tasks=named)) if named else []
    except KeyError as exc:  # its message names the task and the closest names
        raise ValueError(f"--mteb: {exc.args[0] if exc.args else exc}") from None
    return tasks + [dataset_task(s, path, split, templates) for s in specs if ":" in s]


def evaluate_mteb(
    model: LoadedModel,
    name: str,
    revision: str,
    tasks: list,
    prompts: dict[str, str],
    output: str | None = None,
) -> dict[str, dict[str, Any]]:
    """mteb.evaluate over tasks → task name → its scores on each split (main_score among
    them); result files under output (mteb's ResultCache layout: results/<model>/<revision>/
    <task>.json), none when None."""
    import mteb

    result = mteb.evaluate(
        Encoder(model, name, revision, prompts),
        tasks,
        overwrite_strategy="always",
        show_progress_bar=False,
        cache=mteb.ResultCache(output) if output else None,
    )
    return {
        tr.task_name: {
            "main_score": float(tr.get_score()),
            **{split: scores[0] for split, scores in tr.scores.items()},
        }
        for tr in result.task_results
    }
