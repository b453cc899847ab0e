"""Wrong paths given to export, index, embed, import, ingest, eval and report (issue 27): each
refused by the real CLI in seconds, with one line naming the argument and what to give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.mistakes.runner import assert_refused, run_cli

OLD_CHECKPOINT = REPO / "tests" / "fixtures" / "checkpoint-v1"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_dataset) -> dict[str, str]:
    """Cheap inputs in one folder (the CLI's cwd, so messages show these short names): a
    checkpoint, a run directory holding it, files that are no weights, a few tiny OpenCLIP
    local-dirs; the dataset is the session's digits."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.open_clip_models import tiny_clip

    root = tmp_path_factory.mktemp("mistakes")
    shutil.copytree(OLD_CHECKPOINT, root / "ckpt")
    shutil.copytree(OLD_CHECKPOINT, root / "run" / "checkpoint_000001")
    summary = {"checkpoint": str(root / "run" / "checkpoint_000001"), "epoch": 1, "step": 8}
    (root / "run" / "metrics.json").write_text(json.dumps(summary))
    (root / "notes.txt").write_text("weights are on the shared drive\n")
    (root / "random.bin").write_bytes(bytes(range(256)) * 16)
    (root / "used").mkdir()
    (root / "used" / "keep.txt").write_text("mine")
    (root / "weights_dir").mkdir()
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(mlp.state_dict(), root / "other.pt")
    torch.save(torch.nn.Linear(2, 2), root / "pickled_model.pt")  # the module, not its state
    tiny = tiny_clip(root / "tiny")
    shutil.copy(tiny / "open_clip_model.safetensors", root / "tiny.safetensors")
    shutil.copytree(tiny, root / "tiny_no_weights")
    (root / "tiny_no_weights" / "open_clip_model.safetensors").unlink()
    shutil.copytree(tiny, root / "tiny_broken")
    state = load_file(tiny / "open_clip_model.safetensors")
    del state["ln_final.weight"]
    save_file(state, root / "tiny_broken" / "open_clip_model.safetensors")
    return {"root": str(root), "data": str(digits_dataset), "parent": str(digits_dataset.parent)}


EXPORT = ("export", "ckpt")
IMPORT_B32 = ("import", "open_clip", "--model", "ViT-B-32")
IS_FILE = "is a file; give a new or empty directory"

# (arguments, phrases the one error line holds); {data} is the dataset, {parent} its folder.
ROWS = [
    # 1. export's OUT
    ((*EXPORT, "notes.txt", "--format", "safetensors"), ["OUT notes.txt: " + IS_FILE]),
    ((*EXPORT, "notes.txt/sub", "--format", "onnx"), ["OUT notes.txt/sub", "is a file, not a"]),
    ((*EXPORT, "used", "--format", "onnx"), ["OUT used: not empty", "keep.txt"]),
    ((*EXPORT, "ckpt/exported", "--format", "onnx"), ["inside the checkpoint ckpt"]),
    (("export", "ckpt/model.pt", "out", "--format", "onnx"), ["give the checkpoint directory"]),
    (("export", "nope", "out", "--format", "onnx"), ["nope: no such file or directory"]),
    # 1, 2. index and embed write apart from their inputs, and only where nothing else is
    (("index", "ckpt", "{data}", "{data}"), ["OUT {data}: is the dataset itself"]),
    (("index", "ckpt", "{data}", "{data}/idx"), ["inside the dataset {data}"]),
    (("index", "ckpt", "{data}", "{parent}"), ["OUT {parent}: holds the dataset"]),
    (("index", "ckpt", "{data}", "notes.txt"), ["OUT notes.txt: " + IS_FILE]),
    (("index", "ckpt", "{data}", "used"), ["OUT used: not empty"]),
    (("index", "ckpt", "run", "idx"), ["run: no manifest.json"]),
    (("embed", "ckpt", "{data}", "{data}"), ["OUT {data}: is the dataset itself"]),
    (("embed", "ckpt", "{data}", "{data}/val/emb"), ["inside the dataset"]),
    (("embed", "ckpt", "{data}", "notes.txt"), ["OUT notes.txt: " + IS_FILE]),
    (("embed", "ckpt", "{data}", "used"), ["OUT used: not empty"]),
    # 3. import open_clip: --weights, --model, OUT
    ((*IMPORT_B32, "--weights", "notes.txt", "o"), ["--weights notes.txt: not a PyTorch or"]),
    ((*IMPORT_B32, "--weights", "random.bin", "o"), ["not a PyTorch or safetensors weights"]),
    (
        (*IMPORT_B32, "--weights", "other.pt", "o"),
        ["does not fit ViT-B-32", "4 of its 4", "0.bias"],
    ),
    (
        (*IMPORT_B32, "--weights", "tiny.safetensors", "o"),
        ["does not fit ViT-B-32", "visual.conv1.weight is [32, 3, 8, 8]"],
    ),
    ((*IMPORT_B32, "--weights", "pickled_model.pt", "o"), ["Linear object, not only tensors"]),
    ((*IMPORT_B32, "o"), ["--weights is required with an architecture name", "local-dir:DIR"]),
    ((*IMPORT_B32, "--weights", "weights_dir", "o"), ["--weights weights_dir: is a directory"]),
    ((*IMPORT_B32, "--weights", "nope.pt", "o"), ["--weights nope.pt: no such file"]),
    ((*IMPORT_B32, "--weights", "other.pt", "notes.txt"), ["OUT notes.txt: " + IS_FILE]),
    (
        ("import", "open_clip", "--model", "ViT-B-33", "--weights", "other.pt", "o"),
        ["no architecture 'ViT-B-33'", "closest: ViT-B-32"],
    ),
    (
        ("import", "open_clip", "--model", "vit-b/32", "--weights", "other.pt", "o"),
        ["closest: ViT-B-32"],
    ),
    (("import", "open_clip", "--model", "local-dir:nope", "o"), ["no such directory"]),
    (("import", "open_clip", "--model", "local-dir:used", "o"), ["no open_clip_config.json"]),
    (("import", "open_clip", "--model", "local-dir:tiny_no_weights", "o"), ["no weights file"]),
    (
        ("import", "open_clip", "--model", "local-dir:tiny", "--weights", "other.pt", "o"),
        ["--weights: not used with --model local-dir:tiny"],
    ),
    (("import", "open_clip", "--model", "local-dir:tiny", "tiny"), ["OUT tiny: is the --model"]),
    # 4. ingest
    (("data", "ingest", "/nonexistent", "o"), ["SOURCE /nonexistent: no such file or directory"]),
    (("data", "ingest", "notes.txt", "o"), ["SOURCE notes.txt: a file ingest cannot read"]),
    (("data", "ingest", "builtin:digits", "notes.txt"), ["OUT notes.txt: " + IS_FILE]),
    (("data", "ingest", "{data}", "{data}/again"), ["inside SOURCE {data}"]),
    (("data", "ingest", "builtin:digits", "used", "--overwrite"), ["OUT used: not empty"]),
    # 5. a run directory for a checkpoint, and the other way round
    (
        ("eval", "run"),
        ["run is a run directory; its checkpoints: run/checkpoint_000001", "(latest: run/"],
    ),
    (("eval", "run", "{data}"), ["run is a run directory"]),
    (("eval", "ckpt/polymodal.json"), ["is a file; give the checkpoint directory (ckpt)"]),
    (("eval", "ckpt", "{data}", "--out", "used"), ["--out used: is a directory"]),
    (("eval", "nope", "{data}"), ["nope: no such file or directory"]),
    (
        ("report", "run/checkpoint_000001"),
        ["run/checkpoint_000001 is a checkpoint; report takes its run directory run (the parent)"],
    ),
    (("report", "ckpt"), ["ckpt is a checkpoint", "holds none"]),
    (("report", "nope"), ["nope: no such file or directory"]),
    (("report", "{data}"), ["no metrics.json; not a run directory"]),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("args,expect", ROWS, ids=[" ".join(a) for a, _ in ROWS])
def test_a_wrong_path_is_refused_at_once(inputs, args, expect):
    root, data = Path(inputs["root"]), Path(inputs["data"])
    before = _listing(root), _listing(data)
    result = run_cli(*(a.format(**inputs) for a in args), cwd=root)
    # A pickled module is told apart by torch's own weights_only loader: importing torch
    # alone takes 2-3 s on a loaded 2-core host, so that row's bound only catches a hang.
    within = 10.0 if "pickled_model.pt" in args else 3.0
    assert_refused(result, *(e.format(**inputs) for e in expect), within=within)
    assert (_listing(root), _listing(data)) == before  # nothing written, nothing removed


def test_weights_that_do_not_load_are_one_line(inputs):
    """Weights that look like the model's but miss a tensor fail only when open_clip loads
    them: the import must import open_clip and build the model first (5-6 s here)."""
    result = run_cli(
        "import", "open_clip", "--model", "local-dir:tiny_broken", "o", cwd=inputs["root"]
    )
    assert_refused(
        result, "open_clip_model.safetensors does not fit", "1 missing (ln_final.weight)", within=20
    )


def test_init_from_a_run_directory_names_its_checkpoints(inputs):
    """`validate` prints the config's problems itself (exit 1), without the error prefix."""
    config = str(REPO / "jobs" / "configs" / "digits.yaml")
    result = run_cli("validate", config, "train.init_from=run", cwd=inputs["root"])
    shown = f"rc={result.rc} in {result.seconds:.1f}s\n{result.err}"
    assert result.rc != 0 and "Traceback" not in result.err + result.out, shown
    assert "run is a run directory; its checkpoints: run/checkpoint_000001" in result.err, shown
    assert result.seconds < 3.0, shown


def test_an_index_is_rebuilt_in_place(inputs, tmp_path):
    """What index accepts as OUT besides a new or empty directory: its own earlier build."""
    from polymodal import storage
    from polymodal.retrieval.index import rebuildable

    (tmp_path / "index.json").write_text("{}")
    (tmp_path / "parts-0123").mkdir()
    storage.check_output_dir(tmp_path, "OUT", {"the dataset": inputs["data"]}, rebuildable)
    (tmp_path / "index.json").unlink()  # an interrupted first build: parts alone
    storage.check_output_dir(tmp_path, "OUT", {"the dataset": inputs["data"]}, rebuildable)
