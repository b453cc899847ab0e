"""`polymodal submit` before anything reaches a cluster: arguments, config checks, the
runtime env, and every jobs/ entrypoint naming a command the CLI has."""

from pathlib import Path

import pytest

from polymodal.cli import build_parser, main
from polymodal.config import ConfigError
from polymodal.submit import ENTRYPOINTS, find_root, job_arguments, runtime_env

REPO = Path(__file__).resolve().parents[2]


def test_config_becomes_relative_to_the_working_dir():
    config = REPO / "jobs" / "configs" / "digits.yaml"
    args = job_arguments("train", [str(config), "train.epochs=2"], REPO)
    assert args == ["jobs/configs/digits.yaml", "train.epochs=2"]


def test_config_outside_the_working_dir_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "jobs" / "configs" / "digits.yaml").read_text())
    with pytest.raises(ValueError, match="inside the working dir"):
        job_arguments("train", [str(outside)], REPO)


def test_bad_override_and_empty_sweep_fail_before_upload():
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        job_arguments("train", ["jobs/configs/digits.yaml", "train.epoch=2"], REPO)
    with pytest.raises(ConfigError, match="tune.space"):
        job_arguments("tune", ["jobs/configs/digits.yaml"], REPO)
    with pytest.raises(FileNotFoundError, match="no-such.yaml"):
        job_arguments("train", ["jobs/configs/no-such.yaml"], REPO)
    with pytest.raises(ValueError, match="unknown job kind"):
        job_arguments("serve", [], REPO)


def test_embed_arguments_pass_through_options():
    args = build_parser().parse_known_args(
        ["submit", "embed", "ckpt", "data", "out", "--split", "train", "--address", "http://h:1"]
    )
    assert args[0].address == "http://h:1" and args[1] == ["--split", "train"]
    assert job_arguments("embed", ["ckpt", "data", "out", "--split", "train"], REPO)[-1] == "train"
    # other commands still refuse unknown options
    with pytest.raises(SystemExit):
        main(["train", "jobs/configs/digits.yaml", "--bogus"])


def test_root_is_found_from_inside_the_checkout_only(tmp_path):
    assert find_root(REPO / "platform" / "polymodal" / "data") == REPO
    with pytest.raises(FileNotFoundError, match="not inside a polymodal checkout"):
        find_root(tmp_path)


def test_runtime_env_ships_the_source_and_no_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env = runtime_env(REPO)
    assert env["working_dir"] == str(REPO)
    assert env["py_modules"] == [str(REPO / "platform" / "polymodal")]
    assert env["env_vars"]["AWS_REGION"] == "eu-west-1"
    assert "s3cr3t" not in repr(env)
    # excludes apply to the shipped source too: none may drop one of its packages
    packages = {p.parent.name for p in (REPO / "platform" / "polymodal").glob("*/__init__.py")}
    for pattern in env["excludes"]:
        assert pattern.strip("/*") not in packages, pattern


@pytest.mark.parametrize("kind", sorted(ENTRYPOINTS))
def test_every_entrypoint_runs_its_command(kind):
    script = REPO / ENTRYPOINTS[kind]
    text = script.read_text()
    assert text.startswith("# ray job submit"), "entrypoints start with their command"
    assert f'main(["{kind}", *sys.argv[1:]])' in text
    assert kind in build_parser()._subparsers._group_actions[0].choices
