"""A finished run read back from its workdir: config, latest params, tokenizer (for the tools)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import tokenizers
from flax import nnx

from fmjax import params_io
from fmjax.data.tokenizer import tokenizer_of
from fmjax.errors import ConfigError
from fmjax.models import build_model, model_settings
from fmjax.params_io import latest_step, state_dir, unrolled_layers


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


def inference_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The model config the tools build: unrolled blocks (one module per layer, so attention
    layers can sow) and no remat; the weights are the same."""
    model = ml_collections.ConfigDict(model_config.to_dict())
    settings = model_settings(model)
    if settings.scan_layers:
        model.scan_layers = False
    if settings.remat != "none":
        model.remat = "none"
    return model


def latest_params(workdir: str, model_config: ml_collections.ConfigDict) -> tuple[dict, int]:
    """The params of the latest checkpoint (numpy, one host) and its step; no optimizer state."""
    step = latest_step(workdir)
    _, target = abstract_params(model_config)
    return params_io.restore_params(state_dir(workdir, step), target), step


def load_run(workdir: str, *, with_tokenizer: bool = True) -> RunState:
    """Config, latest params and (optionally) the tokenizer of a workdir."""
    config = read_config(workdir)
    params, step = latest_params(workdir, config.model)
    if model_settings(config.model).scan_layers:
        params = unrolled_layers(params)
    config.model = inference_config(config.model)
    tokenizer, path = tokenizer_of(workdir, step) if with_tokenizer else (None, None)
    return RunState(workdir, config, params, step, tokenizer, path)


def tool_parser(module: str, doc: str, workdir_help: str | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`, described by its docstring's first line; with a
    required --workdir when `workdir_help` says what it is."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    if workdir_help is not None:
        parser.add_argument("--workdir", required=True, help=workdir_help)
    return parser


def run_cli(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a tool; a ConfigError becomes one `fmjax: error:` line and exit status 2."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # Orbax's info and warning logs are not for users
    try:
        return function(*args, **kwargs)
    except ConfigError as error:
        print(f"fmjax: error: {error}", file=sys.stderr)
        sys.exit(2)
