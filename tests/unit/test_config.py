import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from polymodal import config
from polymodal.config import Config, ConfigError, config_from_dict, load_config
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.models.build import build_model
from polymodal.train.init_from import with_init_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_defaults_load():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.train.batch_size == 256


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """Stand-ins for the hub models a config names (the hub is out of reach in tests)."""
    from tests import hf_models

    root = tmp_path_factory.mktemp("hf")
    return {"text": hf_models.roberta(root / "text"), "image": hf_models.vit(root / "image")}


@pytest.fixture(scope="module")
def tiny_imported(tmp_path_factory):
    """A stand-in for the imported OpenCLIP checkpoint a config starts from."""
    from polymodal.openclip import import_open_clip
    from tests.open_clip_models import tiny_clip

    root = tmp_path_factory.mktemp("oc")
    return import_open_clip(f"local-dir:{tiny_clip(root / 'src')}", None, root / "imported")["out"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path, request):
    assert path.read_text().startswith("# "), "configs start with the command that runs them"
    assert "polymodal" in path.read_text().splitlines()[0]
    init_from = "init_from" in path.read_text()
    overrides = [f"train.init_from={request.getfixturevalue('tiny_imported')}"] if init_from else []
    cfg = with_init_model(load_config(path, overrides))
    hf = [m for m in ("image", "text") if cfg.model.section(m).encoder == "hf"]
    if hf:
        tiny = request.getfixturevalue("tiny_hf")
        cfg = load_config(path, [f"model.{m}.hf_model={tiny[m]}" for m in hf])
    settings = {}
    for m in hf:  # what the model's tokenizer or image processor sets
        settings.update(MODALITIES[m].settings(cfg, None, None))
    if init_from:  # an imported OpenCLIP model: its sizes, mean/std and tokenizer
        for m in cfg.model.modalities:
            settings.update(MODALITIES[m].settings(cfg, None, None))
    prep = Preprocessing(
        cfg.model.modalities,
        **{
            "image_size": cfg.data.image_size,
            "image_channels": 1,
            "text_max_len": cfg.data.text_max_len,
            **settings,
        },
    )
    model = build_model(cfg, prep, num_classes=10)
    assert set(model.modalities) == set(cfg.model.modalities)


def test_overrides_apply_with_types():
    cfg = load_config(
        CONFIGS[0].parent / "contrastive.yaml",
        [
            "train.epochs=3",
            "objective.weights.reconstruction=0.5",
            "model.modalities=[image, text]",
            "optim.lr=1e-3",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.objective.weights.reconstruction == 0.5
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"'train\.epoch'.*did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"'objectve'.*did you mean 'objective'"):
        load_config(None, ["objectve.weights.contrastive=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"'train\.epochs' must be int, got 'three'"):
        load_config(None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"'train\.use_gpu' must be bool"):
        load_config(None, ["train.use_gpu=1"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.epochz'.*'train\.epochs'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="divide evenly"):
        load_config(None, ["train.batch_size=255", "train.num_workers=2"])
    with pytest.raises(ConfigError, match="unknown modality 'imgae'.*'image'"):
        load_config(None, ["model.modalities=[imgae, text]"])
    with pytest.raises(ConfigError, match="gather"):
        load_config(None, ["objective.contrastive.gather=all"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_storage_keys_stay_out_of_saved_configs():
    import json

    cfg = load_config(
        CONFIGS[0].parent / "digits.yaml",
        [
            "storage.endpoint_url=http://127.0.0.1:9000",
            "storage.access_key_id=AKIDEXAMPLE",
            "storage.secret_access_key=s3cr3t",
        ],
    )
    assert cfg.storage.secret_access_key == "s3cr3t"  # usable by this process
    saved = json.dumps(cfg.to_dict())
    assert "s3cr3t" not in saved and "AKIDEXAMPLE" not in saved
    assert "s3cr3t" not in repr(cfg) and "AKIDEXAMPLE" not in repr(cfg)
    assert cfg.to_dict()["storage"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert config_from_dict(cfg.to_dict()).storage.secret_access_key == ""


def test_types_are_strict_but_floats_read_yaml_strings():
    for key, value, expected in (
        ("train.epochs", "3", "must be int, got '3'"),
        ("train.epochs", True, "must be int, got True"),
        ("train.use_gpu", 1, "must be bool, got 1"),
        ("train.name", 12, "must be str, got 12"),
        ("eval.recall_ks", 5, "must be a list"),
        ("eval.recall_ks", [1, "5"], r"'eval\.recall_ks\[1\]' must be int"),
        ("objective.contrastive.pair_weights", {"image-text": "x"}, "pair_weights.image-text"),
        ("train", 3, "'train' must be a mapping"),
    ):
        tree = value
        for part in reversed(key.split(".")):
            tree = {part: tree}
        with pytest.raises(ConfigError, match=expected):
            config_from_dict(tree)
    cfg = config_from_dict(
        {"optim": {"lr": "1e-3", "weight_decay": 0}, "data": {"augment": {"hflip": "0.5"}}}
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.data.augment.hflip == 0.5
    assert isinstance(cfg.optim.weight_decay, float)


# Every declared choice: a typo names the key, the choices and the closest one.
BAD_CHOICES = [
    (
        "model.image.encoder",
        "resnet19",
        "small_cnn, resnet18, efficientnet_lite0, hf, open_clip",
        "resnet18",
    ),
    ("model.image.norm", "btch", "batch, group", "batch"),
    ("model.audio.norm", "grop", "batch, group", "group"),
    ("model.text.encoder", "minlm", "byte_transformer, minilm, hf, open_clip", "minilm"),
    ("model.text.tuning", "freez", "freeze, finetune, lock_then_unlock", "freeze"),
    ("model.audio.encoder", "mel_cn", "mel_cnn, hf", "mel_cnn"),
    ("model.vector.encoder", "mlpp", "mlp", "mlp"),
    ("objective.weighting", "uncertainty2", "static, uncertainty", "uncertainty"),
    ("objective.contrastive.kind", "sigmoidd", "infonce, sigmoid", "sigmoid"),
    ("objective.contrastive.gather", "ful", "local, full, none", "full"),
    ("objective.contrastive.positives", "labels", "diagonal, label, text", "label"),
    ("train.placement_strategy", "spread", "PACK, SPREAD, STRICT_PACK, STRICT_SPREAD", "SPREAD"),
    ("tune.mode", "maximum", "max, min", "max"),
    ("tune.scheduler", "ashaa", "asha, fifo", "asha"),
    ("tune.searcher", "optuno", "random, optuna", "optuna"),
]


@pytest.mark.parametrize("key,value,choices,suggestion", BAD_CHOICES, ids=lambda v: str(v))
def test_bad_choice_names_key_choices_and_suggestion(key, value, choices, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert str(err.value) == (
        f"'{key}' must be one of {choices}, got '{value}'; did you mean '{suggestion}'?"
    )


def _choices(section: type, name: str) -> set[str]:
    return set(typing.get_args(section.model_fields[name].annotation))


def test_declared_choices_match_the_registries():
    from polymodal.objectives.contrastive import ContrastiveSettings
    from polymodal.objectives.joint import WEIGHTINGS
    from polymodal.objectives.pairwise import CONTRASTIVE_KINDS, GATHER_MODES, POSITIVES
    from polymodal.towers.hf import POOLINGS
    from polymodal.towers.image import NORMS
    from polymodal.towers.tuning import TUNINGS
    from polymodal.tune.sweep import SCHEDULERS, SEARCHERS

    model = config.config_class().model_fields["model"].annotation
    for modality in MODALITIES:  # each encoder choice is its registry, by construction
        section = model.model_fields[modality].annotation
        assert _choices(section, "encoder") == set(MODALITIES[modality].encoders), modality
    sections = {m: model.model_fields[m].annotation for m in ("image", "text", "audio")}
    assert _choices(sections["image"], "norm") == set(NORMS)
    assert _choices(sections["audio"], "norm") == set(NORMS)
    assert _choices(sections["text"], "tuning") == set(TUNINGS)
    assert _choices(sections["text"], "pooling") == set(POOLINGS)
    assert _choices(ContrastiveSettings, "kind") == set(CONTRASTIVE_KINDS)
    assert _choices(ContrastiveSettings, "gather") == set(GATHER_MODES)
    assert _choices(ContrastiveSettings, "positives") == set(POSITIVES)
    assert _choices(config.ObjectiveConfig, "weighting") == set(WEIGHTINGS)
    assert _choices(config.schema.TuneConfig, "scheduler") == set(SCHEDULERS)
    assert _choices(config.schema.TuneConfig, "searcher") == set(SEARCHERS)


def test_active_terms_in_term_order():
    from polymodal.objectives import active_terms

    cfg = load_config(
        None,
        ["objective.weights.classification=0.5", "objective.weights.reconstruction=0"],
    )
    assert {n: t.weight_of(cfg) for n, t in active_terms(cfg).items()} == {
        "contrastive": 1.0,
        "classification": 0.5,
    }
    cfg = load_config(None, ["objective.weights.contrastive=0", "model.modalities=[image]"])
    assert active_terms(cfg) == {}


def test_config_error_from_the_cli_is_fast_and_names_the_key():
    cli = Path(sys.executable).with_name("polymodal")
    cmd = [str(cli)] if cli.is_file() else [sys.executable, "-m", "polymodal.cli"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "train", str(CONFIGS[0].parent / "digits.yaml"), "train.epoch=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "'train.epoch'; did you mean 'train.epochs'?" in proc.stderr
    assert seconds < 2.0, f"a config error took {seconds:.2f}s (torch or Ray imported first?)"


def test_config_module_does_not_import_torch():
    code = "import sys, polymodal.config; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_config_pickles_by_its_values():
    """Its class is assembled at run time, so a pickle (multiprocessing, Ray) carries the
    values and the loading process rebuilds the class from its own registries."""
    import pickle

    cfg = load_config(None, ["train.epochs=3", "model.image.width=8"])
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.model.section("image").width == 8
