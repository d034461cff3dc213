"""Model families built from one block library; `build_model` picks one by config.family."""

from __future__ import annotations

import ml_collections
from flax import nnx

from fmjax.errors import ConfigError


def build_model(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The nnx.Module of model_config.family, built from model_config."""
    from fmjax.models.bert import Bert
    from fmjax.models.bert_classifier import BertClassifier
    from fmjax.models.contrastive import ContrastiveModel
    from fmjax.models.gpt import Gpt
    from fmjax.models.vit import VisionTransformer

    families = {
        "bert": Bert,
        "bert_classifier": BertClassifier,
        "gpt": Gpt,
        "vit": VisionTransformer,
        "contrastive": ContrastiveModel,
    }
    family = model_config.get("family", "")
    if family not in families:
        raise ConfigError(f"unknown model.family {family!r}; known families: {sorted(families)}")
    return families[family](model_config, rngs=rngs)
