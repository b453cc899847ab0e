"""`polymodal import open_clip`'s arguments checked before open_clip is imported (seconds):
the architecture name, the local-dir layout, the weights file and how well it fits, OUT."""

from __future__ import annotations

import difflib
import importlib.util
import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from polymodal import storage

LOCAL_DIR = "local-dir:"
# What open_clip takes from a local-dir (factory._find_checkpoint_in_dir).
LOCAL_WEIGHTS = ("*.safetensors", "*.bin", "*.pth")
# Names at the top of an open_clip CLIP's state dict (CustomTextCLIP keeps its text under text.)
CLIP_NAMES = (
    "visual.",
    "text.",
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
    "logit_scale",
    "logit_bias",
    "attn_mask",
)


def check_import(arch: str, weights: str | None, out: str | Path) -> None:
    """Refuse a wrong --model, --weights or OUT before open_clip is imported (seconds) and a
    model built: each error names the argument and what to give instead."""
    model_cfg = check_model(arch)
    if arch.startswith(LOCAL_DIR):
        if weights is not None:
            raise ValueError(f"--weights: not used with --model {arch} (its weights are there)")
        folder = arch[len(LOCAL_DIR) :]
        storage.check_output_dir(out, "OUT", {"the --model directory": folder})
        return
    if weights is None:
        raise ValueError(
            "--weights is required with an architecture name (or use --model local-dir:DIR)"
        )
    if Path(weights).is_dir():
        raise IsADirectoryError(f"--weights {weights}: is a directory; give the weights file")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file (a local weights file)")
    storage.check_output_dir(out, "OUT", {"--weights": weights})
    check_weights(weights, arch, model_cfg)


def builtin_configs() -> dict[str, Path]:
    """open_clip's architecture configs by name, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("open_clip is not installed: pip install open_clip_torch")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return {f.stem: f for f in folder.glob("*.json")}


def check_model(arch: str) -> dict[str, Any]:
    """--model's open_clip model config, or an error: an unknown name (with the closest),
    a local-dir that is not open_clip's layout, or a kind of model polymodal cannot hold."""
    if arch.startswith(LOCAL_DIR):
        model_cfg = _local_dir_config(arch)
    elif ":" in arch:  # hf-hub:... would download
        raise ValueError(f"--model {arch}: give an architecture name or local-dir:DIR")
    else:
        configs = builtin_configs()
        name = arch.replace("/", "-")  # ViT-B/32, as OpenAI named it (open_clip does the same)
        if name not in configs:
            by_case = {n.lower(): n for n in configs}
            close = [by_case[n] for n in difflib.get_close_matches(name.lower(), by_case, 4, 0.6)]
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(
                f"--model: open_clip has no architecture '{arch}'{hint} "
                f"({len(configs)} in all: python -c 'import open_clip; "
                "print(open_clip.list_models())')"
            )
        model_cfg = json.loads(configs[name].read_text())
    if "multimodal_cfg" in model_cfg:
        raise ValueError(f"--model {arch}: a CoCa captioner; polymodal imports CLIP models")
    if "hf_model_name" in model_cfg.get("text_cfg", {}):
        raise ValueError(
            f"--model {arch}: its text tower is a Hugging Face model, which the import does not "
            "support yet; use model.text.encoder: hf with that text model instead"
        )
    return model_cfg


def _local_dir_config(arch: str) -> dict[str, Any]:
    folder = Path(arch[len(LOCAL_DIR) :])
    if folder.is_file():
        raise NotADirectoryError(f"--model {arch}: is a file; give open_clip's local-dir folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {arch}: no such directory")
    cfg_file = folder / "open_clip_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"--model {arch}: no {cfg_file.name} in {folder} (open_clip's local-dir layout: "
            "that config and a weights file)"
        )
    try:
        model_cfg = json.loads(cfg_file.read_text())["model_cfg"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_file}: not an open_clip config with a model_cfg ({exc})") from None
    if not any(f for pattern in LOCAL_WEIGHTS for f in folder.glob(pattern)):
        # open_clip would build the model with random weights, and say so only in a log.
        raise FileNotFoundError(
            f"--model {arch}: no weights file ({', '.join(LOCAL_WEIGHTS)}) beside {cfg_file.name}"
        )
    return model_cfg


def check_weights(weights: str, arch: str, model_cfg: dict[str, Any]) -> None:
    """--weights is a file of tensors (torch.save's or safetensors) shaped as `arch`'s, read
    without unpickling anything but tensors."""
    shapes = weight_shapes(weights)
    if shapes is None:  # SigLIP's .npz/.npy: open_clip converts those itself
        return
    problem = fingerprint_problem(shapes, model_cfg)
    if problem:
        raise ValueError(f"--weights {weights}: does not fit {arch}: {problem}")


def weight_shapes(weights: str) -> dict[str, tuple[int, ...]] | None:
    """Each tensor's name → shape in a weights file, as open_clip reads it ('state_dict'
    unwrapped, DDP's 'module.' prefix removed); None for big_vision's numpy files."""
    file = Path(weights)
    with file.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY") or (file.suffix == ".npz" and head.startswith(b"PK")):
        return None
    found = f"it starts with {head[:8]!r}" if head else "it is empty"
    not_weights = (
        f"--weights {weights}: not a PyTorch or safetensors weights file ({found}; "
        "torch.save writes a zip or a pickle, safetensors a JSON header)"
    )
    header = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 0 < header <= file.stat().st_size - 8:  # safetensors
        with file.open("rb") as f:
            f.seek(8)
            try:
                entries = json.loads(f.read(header))
            except ValueError:
                raise ValueError(not_weights) from None
        entries.pop("__metadata__", None)
        return _unwrapped({k: tuple(v["shape"]) for k, v in entries.items()})
    is_zip, is_pickle = (
        head.startswith(b"PK\x03\x04"),
        head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05",
    )
    if not (is_zip or is_pickle):
        raise ValueError(not_weights)
    state = _zip_state(file) if is_zip else None
    if state is None:  # not a plain state dict: torch's own loader, without unpickling code
        state = _torch_state(file, is_zip, not_weights)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(
            f"--weights {weights}: holds a {type(state).__name__}, not a state dict of tensors"
        )
    return _unwrapped({k: tuple(v.shape) for k, v in state.items()})


class _Shape:
    """A tensor of a torch.save'd state dict as read without torch: its shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)


def _rebuild_tensor(storage: object, offset: int, size: tuple[int, ...], *rest: object) -> _Shape:
    return _Shape(size)


class _ShapeReader(pickle.Unpickler):
    """torch.save's data.pkl of a plain state dict, with tensors as shapes; any other object
    is refused (and torch's weights_only loader reads the file instead)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:
        return None  # a tensor's storage: its data stays in the zip


def _zip_state(file: Path) -> dict[str, Any] | None:
    """A torch.save zip's state dict as shapes, read in milliseconds (importing torch takes
    seconds), or None when it holds more than tensors in dicts."""
    try:
        with zipfile.ZipFile(file) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            state = _ShapeReader(io.BytesIO(z.read(name))).load()
    except Exception:  # zipfile's, pickle's, StopIteration: torch decides
        return None
    return state if isinstance(state, dict) else None


def _torch_state(file: Path, is_zip: bool, not_weights: str) -> Any:
    import torch

    try:  # mmap: a zip's tensors stay on disk; only their names and shapes are read here
        return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:  # an object weights_only refuses, or garbage
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise ValueError(not_weights) from None
        raise ValueError(
            f"--weights {file}: holds a {found.group(1)} object, not only tensors (a pickled "
            "model? save its state_dict() instead); it is not unpickled, which could run code"
        ) from None
    except Exception as exc:  # a damaged zip or pickle: torch's first sentence
        said = str(exc).strip().split(". ")[0][:120]
        raise ValueError(f"{not_weights[:-1]}; {type(exc).__name__}: {said})") from None


def _unwrapped(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    if next(iter(shapes), "").startswith("module"):  # as open_clip's load_state_dict
        return {k[7:]: v for k, v in shapes.items()}
    return shapes


def fingerprint_problem(shapes: dict[str, tuple[int, ...]], model_cfg: dict[str, Any]) -> str:
    """What shows, without building the model, that these are not weights of that model
    config: names no open_clip CLIP has, parts it must have, or a tell-tale shape ('' if
    none). Loading the weights into the model checks every tensor afterwards."""
    if any(k.startswith("image_encoder.") for k in shapes):
        return ""  # Apple's MobileCLIP layout, which open_clip converts
    unexpected = [k for k in shapes if not k.startswith(CLIP_NAMES)]
    missing = [] if "logit_scale" in shapes else ["logit_scale"]
    if not any(k.startswith("visual.") for k in shapes):
        missing.append("visual.*")
    if not any(k.startswith(("text.", "token_embedding.")) for k in shapes):
        missing.append("token_embedding.weight or text.*")
    if unexpected or missing:
        some = ", ".join(unexpected[:4]) + (", ..." if len(unexpected) > 4 else "")
        parts = [f"{len(unexpected)} of its {len(shapes)} tensors have names no CLIP has ({some})"]
        parts = parts if unexpected else []
        parts += [f"missing {', '.join(missing)}"] if missing else []
        return "; ".join(parts) + " (another model's weights?)"
    for key, want in _expected_shapes(model_cfg).items():
        got = shapes.get(key) or shapes.get(f"text.{key}")
        if got is not None and got != want:
            return f"{key} is {list(got)}, not {list(want)} (another architecture's weights?)"
    return ""


def _expected_shapes(model_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes a model config fixes that weights cannot be resized to (open_clip resizes
    positional embeddings): a ViT's patch embedding and projection, the token embedding."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    out: dict[str, tuple[int, ...]] = {}
    plain_vit = "timm_model_name" not in vision and isinstance(vision.get("layers"), int)
    if plain_vit and {"width", "patch_size"} <= set(vision):
        width, patch = vision["width"], vision["patch_size"]
        out["visual.conv1.weight"] = (width, 3, patch, patch)
    if {"vocab_size", "width"} <= set(text) and "hf_model_name" not in text:
        out["token_embedding.weight"] = (text["vocab_size"], text["width"])
    return out


def mismatch(arch: str, weights: str | None, model_cfg: dict[str, Any], exc: Exception) -> str:
    """One line for torch's load_state_dict error (a line per key): how many keys are missing,
    unexpected or shaped otherwise, and a few of each."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if arch.startswith(LOCAL_DIR):
        weights = _open_clip_weights(arch)
        first = f"--model {arch}: {weights} does not fit its open_clip_config.json"
    else:
        first = f"--weights {weights}: does not fit {arch}"
    try:
        import torch

        from polymodal.towers.openclip import build_open_clip

        with torch.device("meta"):  # names and shapes, no memory and no initialisation
            own = {k: tuple(v.shape) for k, v in build_open_clip(model_cfg).state_dict().items()}
        theirs = weight_shapes(str(weights)) or {}
    except Exception:  # a model or file this cannot read: torch's own first lines
        return f"{first}: {'; '.join(lines[:2])[:300]}"
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shaped = [k for k in own if k in theirs and theirs[k] != own[k]]
    parts = [
        f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shaped otherwise", shaped),
        )
        if keys
    ]
    return f"{first}: " + ("; ".join(parts) if parts else "; ".join(lines[:2])[:300])


def _open_clip_weights(arch: str) -> str:
    """The file open_clip loads from a local-dir (its own choice among the candidates)."""
    from open_clip.factory import _find_checkpoint_in_dir

    return _find_checkpoint_in_dir(Path(arch[len(LOCAL_DIR) :])) or "its weights file"
