from pathlib import Path

import pytest

from polymodal.config import Config, ConfigError, config_from_dict, load_config
from polymodal.data.decode import Preprocessing
from polymodal.models.build import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_defaults_load():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.train.batch_size == 256


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path):
    assert path.read_text().startswith("# "), "configs start with the command that runs them"
    assert "polymodal" in path.read_text().splitlines()[0]
    cfg = load_config(path)
    prep = Preprocessing(cfg.model.modalities, cfg.data.image_size, 1, cfg.data.text_max_len)
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
