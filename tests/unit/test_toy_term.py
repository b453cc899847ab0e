"""docs/architecture.md's "adding an objective term", done: Wang & Isola's alignment loss
(2020: the mean distance between a row's embeddings of two modalities) as one Term with a
section of its own, registered, configured, trained a step (plain and through the gradient
cache, which must give the full batch's gradients) - and no term's name used as a key outside
its own file."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field

from polymodal import objectives
from polymodal.batch import Batch
from polymodal.config import ConfigError, load_config
from polymodal.config.reference import reference
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.base import Term
from polymodal.objectives.grad_cache import grad_cache_backward
from polymodal.objectives.joint import joint_loss
from polymodal.sections import Float, Section
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.step import DDPStep
from tests.conftest import TINY_TOWERS

# ---- the whole term: what a new objectives/<term>.py would hold ----


class AlignmentSettings(Section):
    """Wang & Isola's alignment: a row's embeddings of two modalities pulled together."""

    alpha: Float = Field(2.0, gt=0, description="The distance's exponent.")


def _pairs(batch: Batch, names: list[str]):
    for a, b in itertools.combinations(names, 2):
        yield a, b, (batch.present[a] > 0) & (batch.present[b] > 0)


def count(batch: Batch, section: AlignmentSettings, modalities: list[str]) -> dict[str, Any]:
    return {f"{a}-{b}": both.sum() for a, b, both in _pairs(batch, modalities)}


def loss(outputs, batch: Batch, section: AlignmentSettings, counts=None):
    total, logs = 0.0, {}
    for a, b, both in _pairs(batch, list(outputs.embeddings)):
        gap = (outputs.embeddings[a] - outputs.embeddings[b]).norm(dim=-1) ** section.alpha
        n = both.sum() if counts is None else counts[f"{a}-{b}"]
        pair = (gap * both).sum() / n.clamp(min=1)
        logs[f"{a}-{b}"] = pair.detach()
        total = total + pair
    return total, logs


ALIGNMENT = Term(
    name="alignment",
    weight=0.0,
    section=AlignmentSettings,
    scope="rows",
    loss=loss,
    logs=("{pair}",),
    count=count,
)

# ---- the test ----

PREP = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)
ON = [*TINY_TOWERS, "model.text.layers=1", "objective.weights.alignment=0.5"]


@pytest.fixture
def registered():
    objectives.register(ALIGNMENT)
    yield
    del objectives.TERMS["alignment"]


def _batch(n: int = 12) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        inputs={
            "image": torch.rand(n, 1, 8, 8, generator=g),
            "text": torch.randint(1, 50, (n, 10)),
        },
        present={"image": torch.ones(n), "text": (torch.rand(n, generator=g) > 0.25).float()},
        label=torch.zeros(n, dtype=torch.int64),
    )


def test_an_unregistered_term_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown config key 'objective.weights.alignment'"):
        load_config(None, ["objective.weights.alignment=1"])


def test_a_registered_term_brings_its_weight_and_section(registered):
    cfg = load_config(None, ["objective.weights.alignment=0.5", "objective.alignment.alpha=1"])
    assert ALIGNMENT.weight_of(cfg) == 0.5 and ALIGNMENT.settings(cfg).alpha == 1.0
    assert list(objectives.active_terms(cfg)) == ["contrastive", "alignment"]
    with pytest.raises(ConfigError, match="did you mean 'objective.alignment.alpha'"):
        load_config(None, ["objective.alignment.alfa=1"])
    with pytest.raises(ConfigError, match="'objective.alignment.alpha' must be > 0"):
        load_config(None, ["objective.alignment.alpha=0"])
    assert "`objective.weights.alignment`" in reference()


def test_a_registered_term_trains_a_step_and_logs_its_parts(registered):
    cfg = load_config(None, ON)
    torch.manual_seed(0)
    model = build_model(cfg, PREP)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    step = DDPStep(model, optimizer, scheduler, cfg, torch.device("cpu"))
    value, logs = step(_batch())
    assert {"alignment", "alignment/image-text", "contrastive", "reconstruction"} <= set(logs)
    weighted = 0.5 * logs["alignment"] + logs["contrastive"] + 0.5 * logs["reconstruction"]
    assert value == pytest.approx(float(weighted), rel=1e-5)


def _cached_equals_full_batch(cfg) -> dict:
    """The gradient cache's loss and gradients (chunks of 5) against one full-batch step's,
    in float64; returns the cached step's logs."""
    torch.manual_seed(0)
    model = build_model(cfg, PREP).double()
    batch = _batch()
    batch = Batch(
        inputs={"image": batch.inputs["image"].double(), "text": batch.inputs["text"]},
        present={m: p.double() for m, p in batch.present.items()},
        label=batch.label,
    )
    loss_full, _ = joint_loss(model(batch), batch, cfg)
    loss_full.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_cached, logs = grad_cache_backward(model, batch, cfg, chunk_size=5)
    assert float(loss_cached) == pytest.approx(float(loss_full), rel=1e-9)
    for name, grad in full.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-8, atol=1e-11)
    return logs


def test_the_gradient_cache_gives_a_rows_terms_full_batch_gradients(registered):
    assert "alignment/image-text" in _cached_equals_full_batch(load_config(None, ON))


class UniformitySettings(Section):
    """Wang & Isola's uniformity of the image embeddings; nothing to set."""


def image_uniformity(outputs, batch: Batch, section: UniformitySettings, counts=None):
    x = outputs.embeddings["image"]  # the text embeddings are left out
    return torch.pdist(x).pow(2).mul(-2).exp().mean().log(), {}


def test_a_batch_term_of_one_modality_gets_the_full_batch_gradients():
    """A batch term that reads some modalities' embeddings only: the others' cached
    embeddings get no gradient from it (the gradient cache once failed indexing it)."""
    term = Term(
        name="image_uniformity",
        weight=0.0,
        section=UniformitySettings,
        scope="batch",
        loss=image_uniformity,
    )
    objectives.register(term)
    try:
        only = ["objective.weights.image_uniformity=1", "objective.weights.contrastive=0"]
        _cached_equals_full_batch(load_config(None, [*ON[:-1], *only]))
    finally:
        del objectives.TERMS["image_uniformity"]


def _matches(log: str, patterns: tuple[str, ...]) -> bool:
    """Whether a log name fits one of a term's declared patterns ({m}, {pair}, {d})."""
    fill = {"{m}": r"[a-z_]+", "{pair}": r"[a-z_]+-[a-z_]+", "{d}": r"\d+"}
    for pattern in patterns:
        regex = re.escape(pattern)
        for hole, sub in fill.items():
            regex = regex.replace(re.escape(hole), sub)
        if re.fullmatch(regex, log):
            return True
    return False


def test_every_built_in_term_logs_only_what_it_declares():
    cfg = load_config(
        None,
        [
            *ON[:-1],
            "objective.weights.classification=1",
            "objective.contrastive.matryoshka_dims=[8]",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, PREP, num_classes=2)
    _, logs = joint_loss(model(_batch()), _batch(), cfg)
    for key in logs:
        term, _, part = key.partition("/")
        assert term in objectives.TERMS, key
        assert not part or _matches(part, objectives.TERMS[term].logs), key


PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "polymodal"


def _strings(tree: ast.AST):
    """(line, text) of every string constant but docstrings (f-strings' literal parts too)."""
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_no_term_name_is_a_key_outside_its_own_file():
    """A term's name as a config key, metric or log name ("contrastive",
    "objective.weights.reconstruction", "val/loss/classification"...) appears only in the
    term's own file: everything else loops over objectives.TERMS."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for name in objectives.TERMS:
            if path == PACKAGE / "objectives" / f"{name}.py":
                continue
            key = re.compile(rf"(^|[./]){name}($|[./])")
            found += [
                f"{path}:{line}: {text!r}" for line, text in _strings(tree) if key.search(text)
            ]
    assert not found, "\n".join(found)
