"""Params as checkpoints hold them: flat names, the two layer layouts, and restore.

Below both fmjax.train and fmjax.tools (it imports neither). Layer layouts: a Stack's blocks are
unrolled (params under layers/0, layers/1, ...; model.scan_layers=False, and what the tools read
and write) or stacked (one tree of [num_layers, ...] arrays under layers/; scan_layers=True).
Checkpoints of either layout load into a model of either layout through these conversions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from fmjax.errors import ConfigError

_STACKED_NAME = re.compile(r"(^|/)layers/[^0-9/][^/]*")  # stacked: layers/<attr>/..., no index


# --- flat names ---------------------------------------------------------------------------------


def path_name(path: tuple) -> str:
    """ "a/b/0/c" of a jax tree path (dict keys and list indices joined by '/')."""
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def flat_names(tree: Any) -> dict[str, Any]:
    """{"a/b/c": leaf} of a nested params tree."""
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --- layer layouts ------------------------------------------------------------------------------


def stack_layers(layers: dict) -> dict:
    """Unrolled per-layer params {0: tree, 1: tree, ...} -> one tree of [num_layers, ...]
    arrays (numpy for numpy input, jax for jax)."""
    trees = [layers[i] for i in sorted(layers, key=int)]
    stack = jax.numpy.stack if isinstance(jax.tree.leaves(trees)[0], jax.Array) else np.stack
    return jax.tree.map(lambda *leaves: stack(leaves), *trees)


def unstack_layers(stacked: dict) -> dict:
    """The inverse of stack_layers: {0: tree, 1: tree, ...} of a stacked tree."""
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    return {i: jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(num_layers)}


def unrolled_layers(params: dict) -> dict:
    """Params with every stack's stacked blocks (a "layers" dict of [num_layers, ...] leaves
    directly under a top-level entry) split into layers/0, layers/1, ..."""
    return {k: _map_layers(v, unstack_layers) for k, v in params.items()}


def stacked_layers(params: dict) -> dict:
    """The inverse of unrolled_layers: the scan_layers=True layout of the same weights."""
    return {k: _map_layers(v, stack_layers) for k, v in params.items()}


def _map_layers(node: Any, convert: Callable[[dict], dict]) -> Any:
    if isinstance(node, dict) and isinstance(node.get("layers"), dict):
        return {**node, "layers": convert(node["layers"])}
    return node


def is_stacked(params: dict) -> bool:
    """Whether `params` holds stacked blocks (the scan_layers=True layout)."""
    return any(_STACKED_NAME.search(name) for name in flat_names(params))


def in_layout(params: dict, stacked: bool) -> dict:
    """`params` in the stacked (True) or unrolled (False) layer layout, whichever it is in."""
    if is_stacked(params) == stacked:
        return params
    return stacked_layers(params) if stacked else unrolled_layers(params)


def unrolled_shapes(shapes: dict[str, tuple]) -> dict[str, tuple]:
    """{name: shape} with stacked blocks (layers/<attr>..., [num_layers, ...]) listed per layer
    (layers/<i>/<attr>..., [...]): the layout two models' params are compared in."""
    out = {}
    for name, shape in shapes.items():
        match = _STACKED_NAME.search(name)
        if match is None:
            out[name] = shape
            continue
        prefix, rest = name[: match.start() + len(match.group(1))], name[match.end(1) :]
        for i in range(shape[0]):
            out[f"{prefix}layers/{i}{rest[len('layers') :]}"] = tuple(shape[1:])
    return out


# --- checkpoints on disk ------------------------------------------------------------------------


def resolve_checkpoint(path: str, field: str = "train.init_from") -> tuple[str, str, int]:
    """(workdir, state item folder, step) of a checkpoint path given as config `field`: a
    workdir, its checkpoints/ folder, one checkpoints/<step> folder or its state/ item;
    ConfigError (naming `field`) if it names none."""
    path = os.path.abspath(os.path.expanduser(path))
    hint = f"point {field} at a workdir with checkpoints (or one checkpoints/<step> folder)"
    if not os.path.exists(path):
        raise ConfigError(f"{field}={path} does not exist; {hint}")
    if os.path.basename(path) == "state":
        path = os.path.dirname(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if os.path.basename(path) == "checkpoints":
        steps = ocp.utils.checkpoint_steps(path)
        if not steps:
            raise ConfigError(f"{field}: {path} holds no finished checkpoint; {hint}")
        path = os.path.join(path, str(max(steps)))
    state_dir = os.path.join(path, "state")
    if not os.path.isdir(state_dir) or not os.path.basename(path).isdigit():
        raise ConfigError(f"{field}: {path} is not an fmjax checkpoint; {hint}")
    checkpoints_dir = os.path.dirname(path)
    return os.path.dirname(checkpoints_dir), state_dir, int(os.path.basename(path))


def latest_step(workdir: str) -> int:
    """The newest checkpoint step in workdir/checkpoints (ConfigError if there is none)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise ConfigError(f"no checkpoint in {directory}; train first (--mode=train)")
    return max(steps)


def state_dir(workdir: str, step: int) -> str:
    """The folder of checkpoint `step`'s train state item."""
    return os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")


def checkpoint_data_state(workdir: str, step: int) -> dict:
    """The data position saved with a checkpoint (step, tokenizer_sha256, ...)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "data")
    if not os.path.isdir(directory):
        return {}
    checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    return dict(checkpointer.restore(directory, args=ocp.args.JsonRestore()) or {})


def saved_params_metadata(directory: str) -> Any:
    """The params' shapes and dtypes saved in a checkpoint's state item (ConfigError if it
    cannot be read)."""
    try:
        return ocp.StandardCheckpointHandler().metadata(epath.Path(directory))["params"]
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is the user's path
        raise ConfigError(
            f"cannot read the checkpoint {directory} ({type(error).__name__}); "
            "is it an fmjax checkpoint?"
        ) from None


def restore_params(directory: str, target: Any = None) -> dict:
    """The params of a checkpoint's state item as numpy arrays on the host (no optimizer
    state; the full train state onto a mesh is fmjax.train.checkpoint.Checkpointer's).

    `target` (a tree of shapes and dtypes) defaults to everything the checkpoint holds;
    ConfigError when the checkpoint does not hold `target`'s params.
    """
    target = saved_params_metadata(directory) if target is None else target
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {
        "params": jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), target
        )
    }
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            directory,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"checkpoint {directory} does not hold this model's params: "
            f"{' '.join(str(error).split())[:200]}"
        ) from None
    return jax.tree.map(np.asarray, restored["params"])
