"""What an objective term is: one Term object per loss (one file each), owning its config
section, what it adds to the model, what it needs from the data, its loss and its log names.

No torch at import: config.py assembles objective.<term> and objective.weights from the
registry before torch would have loaded. A term's loss imports torch when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from polymodal.sections import Section

if TYPE_CHECKING:
    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

# What a term can need from the data beside the inputs: labels (rows without one are -1) and
# content hashes (same-content rows, e.g. identical captions).
DataNeed = Literal["labels", "hashes"]

# (model outputs, batch, the term's section, whole-batch denominators or None) →
# (the term's loss, {log name: detached value}); see Term.scope. A loss of None: the term
# cannot be measured on this batch (distill without its teacher's embeddings, in evaluation).
Loss = Callable[["ModelOutput", "Batch", Any, Any], tuple[Any, dict[str, Any]]]


def no_parts(cfg: Config, prep: Any, num_classes: int) -> dict[str, Any]:
    return {}


def no_problems(cfg: Config) -> list[str]:
    return []


S = TypeVar("S", bound=Section)


@dataclass(frozen=True)
class Term(Generic[S]):
    """One objective term. `TERMS` (objectives/__init__.py) holds one per name; config
    sections, the model builder, the step, the gradient cache, the resume check and the
    OpenCLIP import loop over it."""

    name: str
    # objective.weights.<name>'s default (0 = off unless a config turns it on).
    weight: float
    # objective.<name>: the term's settings (a Section), or None when it has none.
    section: type[S] | None
    # rows: a mean over rows, so a batch can be split into sub-batches that each divide by
    # the whole batch's `count` (the gradient cache); batch: a function of every row's
    # embedding at once (the gradient cache computes it once, on cached embeddings).
    scope: Literal["rows", "batch"]
    loss: Loss
    # Log names the loss returns beside the term's own (patterns: {m} a modality, {pair}
    # "a-b", {d} a size); train/loss/<term>/<log> and val/loss/<term>/<log> in the metrics.
    logs: tuple[str, ...] = ()
    # rows scope: (batch, section, model modalities) → the denominators `loss` takes.
    count: Callable[[Batch, Any, list[str]], Any] | None = None
    # JointModel keyword arguments this term sets: (cfg, prep, num_classes) → {name: value};
    # called whether or not the term is active (e.g. a frozen temperature when it is off).
    model_parts: Callable[[Config, Any, int], dict[str, Any]] = no_parts
    # What it needs from the data when active (the run checks the dataset has it).
    data_needs: Callable[[Any], frozenset[DataNeed]] = lambda section: frozenset()
    # The modalities whose towers it trains (an active term's; DDP looks for unused ones).
    modalities: Callable[[Config], list[str]] = lambda cfg: list(cfg.model.modalities)
    # Config keys (dotted) → values that a resumed run must find unchanged: what changes the
    # model's parameters or their meaning.
    identity: Callable[[Config], dict[str, Any]] = lambda cfg: {}
    # Cross-field checks: messages that each start with the dotted key at fault.
    check: Callable[[Config], list[str]] = no_problems
    # Frozen reference models it reads (train/references.py): role -> (the dotted setting
    # that names it, its checkpoint, the modalities it must embed); their embeddings come
    # in Batch.reference.
    references: Callable[[Config], dict[str, tuple[str, str, list[str]]]] = lambda cfg: {}

    def settings(self, cfg: Config) -> S:
        """objective.<name> of cfg; None for a term without a section (whose loss and
        callables take None in its place)."""
        return cast(S, getattr(cfg.objective, self.name, None))

    def weight_of(self, cfg: Config) -> float:
        # objective.weights is assembled from the registered terms: no static attribute.
        return float(attrgetter(f"weights.{self.name}")(cfg.objective))

    def active(self, cfg: Config) -> bool:
        return self.weight_of(cfg) > 0
