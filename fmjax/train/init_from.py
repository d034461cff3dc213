"""Start a new run from a pretrained checkpoint (config train.init_from): copy every parameter
whose path exists in the checkpoint (e.g. BERT's embeddings and encoder), keep the fresh
initialization of the others (e.g. a classification head).

train.init_from names a workdir, its checkpoints/ folder, one checkpoints/<step> folder or that
folder's state/ item. The pretrained params are read onto the host (numpy) and placed with the new
run's shardings, so the layer layouts may differ (model.scan_layers on one side only).
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from fmjax.errors import ConfigError

_STACKED_LAYERS = re.compile(r"(^|/)layers/[^0-9/][^/]*")  # scan_layers: layers/<attr>/...


def resolve_checkpoint(path: str, field: str = "train.init_from") -> tuple[str, str, int]:
    """(workdir, state item folder, step) of a train.init_from path; ConfigError (naming the
    config `field` the path came from) if none."""
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


def flat_names(tree: Any) -> dict[str, Any]:
    """{"a/b/c": leaf} of a nested params tree (dict keys and list indices joined by '/')."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = (getattr(k, "key", getattr(k, "idx", k)) for k in path)
        flat["/".join(str(k) for k in keys)] = leaf
    return flat


def _saved_params_metadata(state_dir: str) -> Any:
    try:
        return ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))["params"]
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is the user's path
        raise ConfigError(
            f"train.init_from: cannot read {state_dir} ({type(error).__name__}); "
            "is it an fmjax checkpoint?"
        ) from None


def unrolled_shapes(shapes: dict[str, tuple]) -> dict[str, tuple]:
    """{name: shape} with stacked blocks (layers/<attr>..., [num_layers, ...]) listed per layer
    (layers/<i>/<attr>..., [...]), the layout both sides are compared in."""
    out = {}
    for name, shape in shapes.items():
        match = _STACKED_LAYERS.search(name)
        if match is None:
            out[name] = shape
            continue
        prefix, rest = name[: match.start() + len(match.group(1))], name[match.end(1) :]
        for i in range(shape[0]):
            out[f"{prefix}layers/{i}{rest[len('layers') :]}"] = tuple(shape[1:])
    return out


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
        {k: tuple(v.shape) for k, v in flat_names(_saved_params_metadata(state_dir)).items()}
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


def read_pretrained_params(state_dir: str) -> dict:
    """The params of a checkpoint's state item as a nested dict of numpy arrays (host)."""
    metadata = _saved_params_metadata(state_dir)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        "params": jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), metadata
        )
    }
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    return jax.tree.map(np.asarray, restored["params"])


def _in_layout(params: dict, stacked: bool) -> dict:
    """Pretrained params in the new model's layer layout (unrolled or stacked blocks)."""
    from fmjax.tools.workdir import stacked_layers, unrolled_layers

    saved_stacked = any(_STACKED_LAYERS.search(name) for name in flat_names(params))
    if saved_stacked == stacked:
        return params
    return stacked_layers(params) if stacked else unrolled_layers(params)


def copy_pretrained_params(
    params: dict, shardings: dict, pretrained: dict, *, stacked: bool, source: str
) -> tuple[dict, list[str]]:
    """`params` with every leaf also in `pretrained` (by path) replaced by the pretrained value
    (placed with `shardings`); the names copied. ConfigError on a shape mismatch or no match."""
    saved = flat_names(_in_layout(pretrained, stacked))
    sharding_of = flat_names(shardings)
    copied: list[str] = []

    def take(path, leaf):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
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
    from fmjax.tools.workdir import checkpoint_data_state

    workdir, state_dir, step = resolve_checkpoint(path)
    trained_with = checkpoint_data_state(workdir, step).get("tokenizer_sha256")
    if tokenizer_sha256 and trained_with and trained_with != tokenizer_sha256:
        raise ConfigError(
            f"train.init_from={path} was trained with another tokenizer (sha256 "
            f"{trained_with[:12]}...); use its tokenizer (leave data.tokenizer_file empty)"
        )
    pretrained = read_pretrained_params(state_dir)
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
