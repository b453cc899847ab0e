"""The Config class of the registered plug-ins: schema.py's sections completed with each
modality's model and data settings and each objective term's weight and section.

Built on demand and kept until a registry changes (a test or plug-in registering a modality or
term gets a Config that knows it); torch-free, like the registries it reads.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from polymodal.config.schema import Config, DataConfig, ModelConfig, ObjectiveConfig
from polymodal.modalities import MODALITIES
from polymodal.objectives import TERMS
from polymodal.sections import Float, Section

_built: dict[tuple, type[Config]] = {}


class AssembledConfig(Config):
    """A Config of the classes assembled here; pickled as its values (the class is rebuilt
    where it is loaded, so it must not be pickled by reference)."""

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return _rebuilt, (self.model_dump(),)


def _rebuilt(tree: dict[str, Any]) -> Config:
    return config_class().model_validate(tree)


def _key() -> tuple:
    return tuple((n, id(m)) for n, m in MODALITIES.items()) + tuple(
        (n, id(t)) for n, t in TERMS.items()
    )


def config_class() -> type[Config]:
    """Config with every registered modality's and term's sections."""
    key = _key()
    if key not in _built:
        _built.clear()  # the registries changed: the old class describes another set
        _built[key] = _assemble()
    return _built[key]


def _section(section: type[BaseModel]) -> tuple[type[BaseModel], Any]:
    """A field holding a section, defaulting to the section's defaults: (type, FieldInfo),
    the FieldInfo typed Any (pydantic types Field() as its default's, for class bodies)."""
    return section, Field(default_factory=section, description=section.__doc__)


def _copied(fields: dict[str, FieldInfo]) -> dict[str, tuple[Any, FieldInfo]]:
    return {name: (info.annotation, copy.copy(info)) for name, info in fields.items()}


def _model_section(name: str) -> type[Section]:
    """model.<name>: the modality's settings plus `encoder`, one of its encoders."""
    modality = MODALITIES[name]
    encoders = tuple(modality.encoders)
    # Built at run time from the registry: no static type names these choices.
    choices: Any = Literal.__getitem__(encoders)
    encoder = Field(
        encoders[0],
        description=f"The {name} tower: {' | '.join(encoders)} (Modality.encoders; the first "
        "is the default).",
    )
    return create_model(
        f"{name.title()}ModelConfig",
        __base__=modality.model_settings,
        __doc__=modality.model_settings.__doc__ or f"The {name} tower.",
        encoder=(choices, encoder),
    )


def _assemble() -> type[Config]:
    # Field definitions go to create_model as **fields, typed Any: mypy checks each one
    # against create_model's own keyword parameters (__base__, __doc__...) too.
    data_fields: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for name, modality in MODALITIES.items():
        if modality.data_settings is None:
            continue
        for field, spec in _copied(modality.data_settings.model_fields).items():
            if field in DataConfig.model_fields or field in owners:
                other = owners.get(field, "polymodal")
                raise ValueError(f"modality {name}: data.{field} is {other}'s already")
            data_fields[field], owners[field] = spec, name
    data = create_model(
        "DataConfig", __base__=DataConfig, __doc__=DataConfig.__doc__, **data_fields
    )

    model_fields: dict[str, Any] = {m: _section(_model_section(m)) for m in MODALITIES}
    model = create_model(
        "ModelConfig", __base__=ModelConfig, __doc__=ModelConfig.__doc__, **model_fields
    )

    weights: dict[str, Any] = {
        name: (
            Float,
            Field(
                term.weight,
                description=f"The {name} term's weight (objectives/{name}.py); 0 turns it off.",
            ),
        )
        for name, term in TERMS.items()
    }
    weights_section = create_model(
        "WeightsConfig",
        __base__=Section,
        __doc__="A weight per objective term, in the order the terms are registered.",
        **weights,
    )
    term_fields: dict[str, Any] = {
        name: _section(term.section) for name, term in TERMS.items() if term.section is not None
    }
    objective = create_model(
        "ObjectiveConfig",
        __base__=ObjectiveConfig,
        __doc__=ObjectiveConfig.__doc__,
        weights=_section(weights_section),
        **term_fields,
    )
    return create_model(
        "Config",
        __base__=AssembledConfig,
        __doc__=Config.__doc__,
        data=_section(data),
        model=_section(model),
        objective=_section(objective),
    )
