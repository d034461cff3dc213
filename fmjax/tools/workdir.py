"""A finished run read back from its workdir: config, latest params, tokenizer (for the tools)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tokenizers
from flax import nnx

from fmjax.data.corpora import sha256_file
from fmjax.errors import ConfigError
from fmjax.models import build_model


@dataclasses.dataclass
class RunState:
    """What the tools need from a workdir."""

    workdir: str
    config: ml_collections.ConfigDict  # model section: see inference_config
    params: dict  # pure dict of numpy arrays, blocks unrolled (layers/0, layers/1, ...)
    step: int
    tokenizer: tokenizers.Tokenizer | None
    tokenizer_path: str | None


def read_json(path: str) -> dict:
    """A JSON file as a dict ({} if it does not exist)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config snapshot of a run (workdir/config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{workdir} has no config.json; is it an fmjax workdir?")
    return ml_collections.ConfigDict(read_json(path))


def abstract_params(model_config: ml_collections.ConfigDict) -> tuple[Any, dict]:
    """(graphdef, pure dict of ShapeDtypeStructs) of the model, built without allocating."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def make_model(model_config: ml_collections.ConfigDict, params: dict) -> nnx.Module:
    """The model of `model_config` holding `params` (a pure dict), for inference."""
    graphdef, _ = abstract_params(model_config)
    return nnx.merge(graphdef, jax.tree.map(jax.numpy.asarray, params))


def unrolled_layers(params: dict) -> dict:
    """Params with scan_layers' stacked blocks ([num_layers, ...] leaves under a stack's
    "layers") split into layers/0, layers/1, ...: the layout the tools read and write."""

    def unstack(layers: dict) -> dict:
        count = jax.tree.leaves(layers)[0].shape[0]
        return {i: jax.tree.map(lambda leaf, i=i: leaf[i], layers) for i in range(count)}

    return {k: _map_layers(v, unstack) for k, v in params.items()}


def stacked_layers(params: dict) -> dict:
    """The inverse of `unrolled_layers`: the scan_layers=True layout of the same weights."""

    def stack(layers: dict) -> dict:
        blocks = [layers[i] for i in sorted(layers, key=int)]
        return jax.tree.map(lambda *leaves: np.stack(leaves), *blocks)

    return {k: _map_layers(v, stack) for k, v in params.items()}


def _map_layers(node: Any, convert: Callable[[dict], dict]) -> Any:
    if isinstance(node, dict) and isinstance(node.get("layers"), dict):
        return {**node, "layers": convert(node["layers"])}
    return node


def inference_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The model config the tools build: unrolled blocks (one module per layer, so attention
    layers can sow) and no remat; the weights are the same."""
    model = ml_collections.ConfigDict(model_config.to_dict())
    if model.get("scan_layers"):
        model.scan_layers = False
    if model.get("remat", "none") != "none":
        model.remat = "none"
    return model


def latest_step(workdir: str) -> int:
    """The newest checkpoint step in workdir/checkpoints (ConfigError if there is none)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise ConfigError(f"no checkpoint in {directory}; train first (--mode=train)")
    return max(steps)


def restore_params(workdir: str, model_config: ml_collections.ConfigDict) -> tuple[dict, int]:
    """The params of the latest checkpoint (numpy, one host) and its step; no optimizer state."""
    step = latest_step(workdir)
    _, target = abstract_params(model_config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        "params": jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), target
        )
    }
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"checkpoint {path} does not match the model in {workdir}/config.json: "
            f"{' '.join(str(error).split())[:200]}"
        ) from None
    return jax.tree.map(np.asarray, restored["params"]), step


def checkpoint_data_state(workdir: str, step: int) -> dict:
    """The data position saved with a checkpoint (step, tokenizer_sha256, ...)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "data")
    if not os.path.isdir(directory):
        return {}
    checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    return dict(checkpointer.restore(directory, args=ocp.args.JsonRestore()) or {})


def tokenizer_of(workdir: str, step: int | None = None) -> tuple[tokenizers.Tokenizer, str]:
    """The run's HF tokenizer (path from manifest.json), checked against the checkpoint's sha256."""
    manifest = read_json(os.path.join(workdir, "manifest.json"))
    path = ((manifest.get("data") or {}).get("tokenizer") or {}).get("path")
    own_copy = os.path.join(workdir, "tokenizer.json")  # import_hf's; follows a moved workdir
    if (not path or not os.path.exists(path)) and os.path.exists(own_copy):
        path = own_copy
    if not path:
        raise ConfigError(f"{workdir}/manifest.json names no tokenizer (a text model's run?)")
    if not os.path.exists(path):
        raise ConfigError(
            f"tokenizer {path} of {workdir} is missing; restore it (or point "
            "manifest.json's data.tokenizer.path at a copy)"
        )
    if step is not None:
        expected = checkpoint_data_state(workdir, step).get("tokenizer_sha256")
        if expected and sha256_file(path) != expected:
            raise ConfigError(
                f"tokenizer {path} is not the one checkpoint step {step} was trained with "
                f"(sha256 {expected[:12]}...); restore the original tokenizer file"
            )
    return tokenizers.Tokenizer.from_file(path), path


def load_run(workdir: str, *, with_tokenizer: bool = True) -> RunState:
    """Config, latest params and (optionally) the tokenizer of a workdir."""
    config = read_config(workdir)
    params, step = restore_params(workdir, config.model)
    if config.model.get("scan_layers"):
        params = unrolled_layers(params)
    config.model = inference_config(config.model)
    tokenizer, path = tokenizer_of(workdir, step) if with_tokenizer else (None, None)
    return RunState(workdir, config, params, step, tokenizer, path)


def run_cli(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a tool; a ConfigError becomes one `fmjax: error:` line and exit status 2."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # Orbax's info and warning logs are not for users
    try:
        return function(*args, **kwargs)
    except ConfigError as error:
        print(f"fmjax: error: {error}", file=sys.stderr)
        sys.exit(2)
