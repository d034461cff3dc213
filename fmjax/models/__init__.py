"""Model families built from one block library; `build_model` picks one by config.model.family.

A family is one file, fmjax/models/<family>.py, whose `Model` is an nnx.Module taking the
settings dataclass named by its `config_class` (see fmjax/models/settings.py).
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.settings import from_config


def model_families() -> dict[str, type[nnx.Module]]:
    """model.family -> its model class: the `Model` of every fmjax/models/<family>.py."""
    families = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "Model"):
            families[module_info.name] = module.Model
    return families


def model_settings(model_config: ml_collections.ConfigDict):
    """config.model as its family's frozen settings; a wrong field is a ConfigError naming it."""
    fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    family = fields.pop("family", "")
    fields.pop("fields_from_init", None)  # a directive fmjax/train/init_from.py resolves first
    families = model_families()
    if family not in families:
        raise ConfigError(f"unknown model.family {family!r}; known families: {sorted(families)}")
    return from_config(families[family].config_class, fields, "model")


def build_model(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The nnx.Module of model_config.family, built from its validated settings."""
    settings = model_settings(model_config)
    return model_families()[model_config["family"]](settings, rngs=rngs)
