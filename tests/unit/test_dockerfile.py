"""The Dockerfile, parsed (no Docker needed): Ray's image at constraints.txt's Ray pin, installs
with those pins, copies only what the image needs, runs as a non-root user, names no secret."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
NEEDED = {"constraints.txt", "pyproject.toml", "README.md", "platform/", "jobs/", "serve/"}
SECRET = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\"',;]+)")


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[normalize(name)] = version
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def base_image(text: str, build_args: dict[str, str] | None = None) -> str:
    """The FROM image with the ARG defaults declared before it (or build_args) filled in."""
    values = {}
    for keyword, args in instructions(text):
        if keyword == "ARG":
            name, _, default = args.partition("=")
            values[name] = (build_args or {}).get(name, default)
        elif keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], args.split()[0])
    raise AssertionError("no FROM")


def problems(text: str) -> list[str]:
    """Everything that breaks the image's contract, one line each; [] for a good Dockerfile."""
    pins, found = constraint_pins(), []
    steps = instructions(text)

    repo, _, tag = base_image(text).partition(":")
    version, _, rest = tag.partition("-")
    if repo != "rayproject/ray" or version != pins["ray"] or not rest.startswith("py311-"):
        found.append(f"base image {repo}:{tag} is not rayproject/ray:{pins['ray']}-py311-*")

    runs = [args for keyword, args in steps if keyword == "RUN"]
    installs = [c for args in runs for c in re.split(r"&&|;", args) if "pip install" in c]
    if not installs:
        found.append("no pip install")
    for command in installs:
        if not re.search(r"(-c|--constraint)[ =]constraints\.txt", command):
            found.append(f"installs without -c constraints.txt: {command.strip()}")
    for args in runs:
        for name, version in PIN.findall(args):
            pinned = pins.get(normalize(name))
            if pinned != version:
                found.append(f"{name}=={version} but constraints.txt has {pinned}")

    for keyword, args in steps:
        if keyword in ("COPY", "ADD"):
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            found += [f"{keyword} {s}: not needed in the image" for s in sources if s not in NEEDED]

    users = [args.split(":")[0] for keyword, args in steps if keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        found.append(f"final USER is {users[-1] if users else 'the base image default'}")

    for keyword, args in steps:
        if keyword == "ARG" or (keyword == "ENV" and "=" not in args.split()[0]):
            names = [re.split(r"[=\s]", args)[0]]  # ARG NAME[=default], ENV NAME value
        elif keyword == "ENV":
            names = re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", args)  # ENV A=1 B=2
        else:
            continue
        found += [f"{keyword} {n} names a secret" for n in names if SECRET.search(n)]
    return found


def test_dockerfile_keeps_its_contract():
    assert problems(DOCKERFILE.read_text()) == []


def test_base_image_follows_the_ray_pin_in_both_variants():
    text, ray = DOCKERFILE.read_text(), constraint_pins()["ray"]
    assert base_image(text) == f"rayproject/ray:{ray}-py311-cpu"
    assert base_image(text, {"VARIANT": "gpu"}) == f"rayproject/ray:{ray}-py311-gpu"


def test_the_pins_it_names_are_checked():
    # torch and torchvision are named with versions; the check above compared them.
    named = {normalize(n) for n, _ in PIN.findall(DOCKERFILE.read_text())}
    assert {"torch", "torchvision"} <= named


def test_dockerignore_keeps_data_runs_and_environments_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git/", ".venv/", "data/", "runs/"} <= set(ignored)


def mutate(old: str, new: str) -> str:
    text = DOCKERFILE.read_text()
    assert old in text, old
    return text.replace(old, new)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0", "base image"),
        ("py311-", "py310-", "base image"),
        ("rayproject/ray:", "python:", "base image"),
        ("torch==2.14.1", "torch==2.13.0", "torch==2.13.0 but constraints.txt"),
        ('-c constraints.txt ".[search,tracking]"', '".[search,tracking]"', "installs without -c"),
        ("COPY --chown=1000:100 jobs/", "COPY --chown=1000:100 data/ jobs/", "COPY data/"),
        ("USER 1000:100", "USER root", "final USER is root"),
        ("USER 1000:100", "USER 0", "final USER is 0"),
        ("ARG VARIANT=cpu", "ARG VARIANT=cpu\nARG AWS_SECRET_ACCESS_KEY", "ARG AWS_SECRET"),
        ("ENV PYTHONPATH=", "ENV HF_TOKEN=x PYTHONPATH=", "ENV HF_TOKEN names a secret"),
        ("ENV PYTHONPATH=/home/ray/polymodal", "ENV A=1 API_KEY=x", "ENV API_KEY names a secret"),
        ("ENV PYTHONPATH=/home/ray/polymodal", "ENV DB_PASSWORD x", "ENV DB_PASSWORD names"),
    ],
)
def test_each_check_catches_its_mistake(old, new, expected):
    found = problems(mutate(old, new))
    assert any(expected in p for p in found), found
