"""`polymodal export`: a checkpoint as files other tools load: ONNX (one graph per encoder, checked
with onnxruntime), safetensors (weights that load without unpickling) or open_clip's layout."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal import storage
from polymodal.checkpoint import RunMeta, fetch_checkpoint, load_model, save_checkpoint
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.joint import JointModel
from polymodal.openclip import export_open_clip

FORMATS = ("onnx", "safetensors", "open_clip")
ONNX_OPSET = 17
ONNX_META = "polymodal-onnx.json"


class Embedder(nn.Module):
    """One modality's encoder, projection and L2 normalisation: what /v1/embeddings returns."""

    def __init__(self, model: JointModel, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.modality, x)


def example_input(
    prep: Preprocessing, modality: str, batch: int, seed: int = 0, padded: bool = False
) -> np.ndarray:
    """A batch shaped and typed as the modality's decoded input. Token ids are 1..99, at full
    length unless `padded` (random lengths, then 0s): tracing must see no padding, or a tower
    that trims to the longest row would bake that length into the graph."""
    shape, dtype = MODALITIES[modality].input_shape(prep)
    rng = np.random.default_rng(seed)
    if not np.issubdtype(dtype, np.integer):
        return rng.random((batch, *shape), dtype=np.float32).astype(dtype)
    ids = rng.integers(1, 100, size=(batch, *shape)).astype(dtype)
    if padded:
        for row, length in zip(ids, rng.integers(1, shape[-1] + 1, size=batch)):
            row[..., length:] = 0
    return ids


def export_onnx(model: JointModel, prep: Preprocessing, meta: RunMeta, out: Path) -> dict:
    """OUT/<modality>.onnx for each encoder (input `input`, output `embedding`, dynamic batch)
    and OUT/polymodal-onnx.json: the preprocessing that turns raw values into `input`."""
    out.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, Any] = {}
    for m in model.modalities:
        file = out / f"{m}.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Embedder(model, m).eval(),
                (torch.from_numpy(example_input(prep, m, 2)),),
                str(file),
                dynamo=False,  # the torch.export path needs onnxscript and static control flow
                input_names=["input"],
                output_names=["embedding"],
                dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=ONNX_OPSET,
            )
        shape, dtype = MODALITIES[m].input_shape(prep)
        graphs[m] = {
            "file": file.name,
            "input": {"name": "input", "shape": ["batch", *shape], "dtype": np.dtype(dtype).name},
            "output": {"name": "embedding", "shape": ["batch", model.embed_dim]},
            "max_abs_diff": onnx_difference(model, prep, m, file),
        }
    description = {
        "format": 1,
        "embedding": "L2-normalised; cosine similarity = dot product",
        "graphs": graphs,
        "preprocessing": prep.to_dict(),
        "logit_scale": model.logit_scale().item(),
        "labels": meta.label_names or [],
        "config": meta.config,
    }
    (out / ONNX_META).write_text(json.dumps(description, indent=2))
    return description


def onnx_difference(model: JointModel, prep: Preprocessing, modality: str, file: Path) -> float:
    """Largest |onnxruntime - torch| over a padded batch of 5 (traced: 2 at full length)."""
    import onnxruntime

    x = example_input(prep, modality, 5, seed=1, padded=True)
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    with torch.no_grad():
        want = model.embed(modality, torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())


def export_checkpoint(checkpoint: str, out: str | Path, fmt: str) -> dict:
    """Write `checkpoint` to `out` in format `fmt`; returns what was written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown '{fmt}'; choose from {', '.join(FORMATS)}")
    storage.check_output_dir(out, "OUT", {"the checkpoint": checkpoint})
    out = Path(out)
    model, meta = load_model(fetch_checkpoint(checkpoint))
    prep = meta.prep
    if fmt == "safetensors":
        save_checkpoint(out, model, meta.model_copy(update={"files": {}}), safetensors=True)
        return {"format": fmt, "out": str(out), "files": sorted(p.name for p in out.iterdir())}
    if fmt == "open_clip":
        diffs = export_open_clip(model, meta.run_config(), prep, out)
        return {"format": fmt, "out": str(out), "max_abs_diff": diffs}
    description = export_onnx(model, prep, meta, out)
    diffs = {m: g["max_abs_diff"] for m, g in description["graphs"].items()}
    return {"format": fmt, "out": str(out), "max_abs_diff": diffs}
