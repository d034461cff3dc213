"""Start a new run from a pretrained checkpoint (config train.init_from): copy every parameter
whose path exists in the checkpoint (e.g. BERT's embeddings and encoder), keep the fresh
initialization of the others (e.g. a classification head).

train.init_from names a workdir, its checkpoints/ folder, one checkpoints/<step> folder or that
folder's state/ item. The pretrained params are read onto the host (numpy) and placed with the new
run's shardings, so the layer layouts may differ (model.scan_layers on one side only).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fmjax.errors import ConfigError
from fmjax.params_io import (
    checkpoint_data_state,
    flat_names,
    in_layout,
    path_name,
    resolve_checkpoint,
    restore_params,
    saved_params_metadata,
    unrolled_shapes,
)


def check_init_from(config: Any, abstract_params: dict, workdir: str) -> None:
    """For a new run with train.init_from: ConfigError unless the path is a readable checkpoint
    sharing parameters of the same shapes with the model (checked before the workdir is written;
    a run resuming its own checkpoints is not checked)."""
    path = str(config.train.get("init_from", "") or "")
    own = os.path.join(workdir, "checkpoints")
    if not path or (os.path.isdir(own) and ocp.utils.checkpoint_steps(own)):
        return
    _, state_dir, _ = resolve_checkpoint(path)
    saved = unrolled_shapes(
        {k: tuple(v.shape) for k, v in flat_names(saved_params_metadata(state_dir)).items()}
    )
    wanted = unrolled_shapes({k: tuple(v.shape) for k, v in flat_names(abstract_params).items()})
    common = sorted(set(saved) & set(wanted))
    if not common:
        raise ConfigError(
            f"train.init_from={path} holds no parameter of this model (no path in common); "
            "is it a checkpoint of the same family?"
        )
    for name in common:
        if saved[name] != wanted[name]:
            raise ConfigError(
                f"train.init_from={path}: parameter {name} has shape {saved[name]} there, the "
                f"model needs {wanted[name]}; use the pretrained run's model fields "
                "(vocab_size, embed_dim, num_layers, ...)"
            )


def copy_pretrained_params(
    params: dict, shardings: dict, pretrained: dict, *, stacked: bool, source: str
) -> tuple[dict, list[str]]:
    """`params` with every leaf also in `pretrained` (by path) replaced by the pretrained value
    (placed with `shardings`); the names copied. ConfigError on a shape mismatch or no match."""
    saved = flat_names(in_layout(pretrained, stacked))
    sharding_of = flat_names(shardings)
    copied: list[str] = []

    def take(path, leaf):
        name = path_name(path)
        if name not in saved:
            return leaf
        value = saved[name]
        if tuple(value.shape) != tuple(leaf.shape):
            raise ConfigError(
                f"train.init_from={source}: parameter {name} has shape {tuple(value.shape)} "
                f"there, the model needs {tuple(leaf.shape)}; use the pretrained run's model "
                "fields (vocab_size, embed_dim, num_layers, ...)"
            )
        copied.append(name)
        return jax.device_put(np.asarray(value, leaf.dtype), sharding_of[name])

    new_params = jax.tree_util.tree_map_with_path(take, params)
    if not copied:
        raise ConfigError(
            f"train.init_from={source} holds no parameter of this model (no path in common); "
            "is it a checkpoint of the same family?"
        )
    return new_params, copied


def init_from_pretrained(
    path: str, state: dict, params_shardings: dict, *, stacked: bool, tokenizer_sha256: str = ""
) -> tuple[dict, list[str], int]:
    """A fresh train state with the pretrained params of `path` copied in; (state, copied, step).

    The optimizer state is left as initialized (Adam moments start at zero either way).
    """
    workdir, state_dir, step = resolve_checkpoint(path)
    trained_with = checkpoint_data_state(workdir, step).get("tokenizer_sha256")
    if tokenizer_sha256 and trained_with and trained_with != tokenizer_sha256:
        raise ConfigError(
            f"train.init_from={path} was trained with another tokenizer (sha256 "
            f"{trained_with[:12]}...); use its tokenizer (leave data.tokenizer_file empty)"
        )
    pretrained = restore_params(state_dir)
    params, copied = copy_pretrained_params(
        state["params"], params_shardings, pretrained, stacked=stacked, source=path
    )
    return {**state, "params": params}, copied, step


# The families a run may take its model fields from (model.fields_from_init).
INHERITABLE_FAMILIES = {"bert": ("bert",), "bert_classifier": ("bert", "bert_classifier")}
INHERITABLE_FAMILIES["gpt"] = ("gpt",)


def inherit_model_fields(config: Any) -> None:
    """model.fields_from_init=True: every model field the config does not set (sizes, norms,
    vocabulary, positions, ...) is taken from the config.json of train.init_from's run, so an
    experiment can fine-tune or continue whatever model that workdir holds (e.g. one written by
    fmjax.tools.import_hf). The fields the config sets (family, num_classes, ...) win."""
    if not config.model.get("fields_from_init", False):
        return
    import json

    source = str(config.train.get("init_from", "") or "")
    family = str(config.model.get("family", ""))
    if not source:
        raise ConfigError(
            f"this experiment takes its {family} model from a pretrained run: set "
            "--config.train.init_from=WORKDIR (an fmjax run, or one fmjax.tools.import_hf wrote)"
        )
    workdir, _, _ = resolve_checkpoint(source)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"train.init_from={source}: {path} is missing; is it an fmjax workdir?")
    with open(path) as f:
        pretrained = dict(json.load(f)["model"])
    allowed = INHERITABLE_FAMILIES.get(family, (family,))
    if pretrained.get("family") not in allowed:
        raise ConfigError(
            f"train.init_from={source} holds a {pretrained.get('family')!r} model; this "
            f"experiment needs {' or '.join(map(repr, allowed))}"
        )
    own = {k: v for k, v in config.model.to_dict().items() if k != "fields_from_init"}
    if family == "bert_classifier" and pretrained.get("family") == "bert":
        for field in ("num_classes", "pooler", "classifier_dropout_rate"):
            pretrained.pop(field, None)
    with config.unlocked():
        for key, value in pretrained.items():
            if key not in own and key != "fields_from_init":
                config.model[key] = value
        config.model.fields_from_init = False  # resolved: the snapshot holds every field
