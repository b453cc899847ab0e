"""polymodal's numbers against the field's harnesses on the same rows, and what each costs:
`polymodal eval` vs mteb (tasks built from the split) vs CLIP_benchmark (polymodal's reading of
its layout and, for an imported OpenCLIP model, clip_benchmark's own CLI on the open_clip
export). Prints JSON: each pair of numbers, their largest difference, seconds per harness.

.venv/bin/python benchmarks/harnesses.py CHECKPOINT [DATASET] [--split val]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polymodal.checkpoint import load_model
from polymodal.data.clip_benchmark import export_dataset
from polymodal.evaluation.evaluate import decoded_batches, evaluate
from polymodal.inference.model import LoadedModel
from polymodal.integrations.clip_benchmark import evaluate_layout
from polymodal.integrations.mteb import evaluate_mteb, tasks_for

PAIRS = (("text", "image"), ("image", "text"))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start


def clip_benchmark_cli(exported: Path, root: Path, name: str, task: str, out: Path) -> dict:
    """clip_benchmark's CLI (zero-shot accuracy through our numpy-2.4 entry point)."""
    command = [str(Path(sys.executable).parent / "clip_benchmark")]
    if task == "zeroshot_classification":
        command = [sys.executable, "-m", "polymodal.integrations.clip_benchmark"]
    command += ["eval", "--model", f"local-dir:{exported}", "--dataset", f"wds/{name}"]
    command += ["--dataset_root", f"{root}/{{dataset}}", "--task", task, "--no_amp"]
    command += ["--num_workers", "0", "--recall_k", "1", "5", "10", "--output", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    return json.loads(out.read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset", nargs="?")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    model, meta = load_model(args.checkpoint)
    cfg, prep = meta.run_config(), meta.prep
    dataset = args.dataset or meta.dataset
    templates = meta.zero_shot_templates
    ours, ours_s = timed(
        evaluate,
        model,
        decoded_batches(dataset, args.split, prep),
        prep,
        cfg,
        losses=False,
        label_names=meta.label_names,
        templates=templates,
    )
    one = evaluate(model, decoded_batches(dataset, args.split, prep), prep, cfg, losses=False,
                   label_names=meta.label_names, templates=templates[:1])  # fmt: skip
    loaded = LoadedModel.load(args.checkpoint)
    specs = [f"retrieval:{a}->{b}" for a, b in PAIRS] + ["zeroshot:image"]
    tasks = tasks_for(specs, dataset, args.split, templates)
    scores, mteb_s = timed(evaluate_mteb, loaded, "bench", "x", tasks, {})
    name = Path(str(dataset).rstrip("/")).name
    pairs = {}
    for a, b in PAIRS:
        theirs = scores[f"{name}-retrieval-{a}2{b}"][args.split]
        for k in (1, 5, 10):
            pairs[f"mteb recall_at_{k} {a}->{b}"] = (
                theirs[f"recall_at_{k}"], ours[f"val/recall@{k}/{a}->{b}"]
            )  # fmt: skip
    pairs["mteb zeroshot accuracy (first template)"] = (
        scores[f"{name}-zeroshot-image"]["main_score"], one["val/zero_shot_accuracy"]
    )  # fmt: skip
    seconds = {"polymodal eval": ours_s, "mteb (3 tasks)": mteb_s}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cb"
        export_dataset(dataset, str(root / name), args.split)
        export_dataset(dataset, str(root / f"{name}-ret"), args.split, "zeroshot_retrieval")
        cls, seconds["clip_benchmark layout (polymodal)"] = timed(
            evaluate_layout, loaded, str(root / name)
        )
        ret = evaluate_layout(loaded, str(root / f"{name}-ret"))["metrics"]
        pairs["clip_benchmark acc1 vs val/zero_shot_accuracy"] = (
            cls["metrics"]["acc1"], ours["val/zero_shot_accuracy"]
        )  # fmt: skip
        for k in (1, 5, 10):
            pairs[f"clip_benchmark image_retrieval_recall@{k} vs text->image"] = (
                ret[f"image_retrieval_recall@{k}"], ours[f"val/recall@{k}/text->image"]
            )  # fmt: skip
        if cfg.model.section("image").encoder == "open_clip":
            from polymodal.export import export_checkpoint

            exported = Path(tmp) / "open_clip"
            export_checkpoint(args.checkpoint, exported, "open_clip")
            cli, seconds["clip_benchmark CLI"] = timed(
                clip_benchmark_cli, exported, root, name, "zeroshot_classification",
                Path(tmp) / "cls.json",
            )  # fmt: skip
            for key in ("acc1", "acc5", "mean_per_class_recall"):
                pairs[f"clip_benchmark CLI {key}"] = (cli[key], cls["metrics"][key])
            # The resizing polymodal used for these models before: both sides, bilinear
            loaded.prep.image_resize, loaded.prep.image_interpolation = "squash", "bilinear"
            old = evaluate_layout(loaded, str(root / name))["metrics"]
            pairs["clip_benchmark CLI acc1 vs polymodal's old resizing"] = (
                cli["acc1"],
                old["acc1"],
            )
    rows = {
        k: {"harness": a, "polymodal": b, "difference": abs(a - b)} for k, (a, b) in pairs.items()
    }
    print(json.dumps({"checkpoint": args.checkpoint, "dataset": dataset, "rows": rows,
                      "seconds": seconds}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
