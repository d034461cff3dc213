"""Logical axis names -> mesh shardings for parameters, optimizer state, batches, activations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen
import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmjax.config import BATCH_MESH_AXES
from fmjax.errors import ConfigError
from fmjax.parallel.mesh import process_batch_block

Rules = Sequence[tuple[str, Any]]


def axis_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    """config.sharding.logical_axis_rules as the tuple of (logical name, mesh axes) flax takes."""
    return tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)


@contextlib.contextmanager
def sharding_context(config: ml_collections.ConfigDict, mesh: Mesh) -> Iterator[None]:
    """The mesh and the config's logical-axis rules, entered once around everything a run
    builds and traces, so `constrain` in the models resolves against the mesh."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(axis_rules(config)):
        yield


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """Constrains an activation's sharding by logical names (no-op outside a mesh and rules)."""
    return flax.linen.with_logical_constraint(x, logical_axes)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a mesh PartitionSpec (unknown names stay unsharded).

    flax.linen's mapping, not nnx.get_partition_spec's: rules are tried in order, each mesh axis
    is used once per array, unknown names are unsharded. nnx renames each name by a dict (the
    last rule wins, ('embed', 'mlp') can become P('fsdp', 'fsdp'), unknown names pass through),
    which would change what a MaxText-style rule list means.
    """
    return flax.linen.logical_to_mesh_axes(tuple(logical_axes), tuple(tuple(r) for r in rules))


def logical_axes(abstract_params: nnx.State) -> dict:
    """Pure dict of each parameter's logical axis names (its `out_sharding` metadata)."""
    with nnx.logical_axis_rules(()):  # the names themselves, whatever rules are entered
        return nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules: Rules) -> dict:
    """NamedSharding for every parameter of an NNX model state, from its logical axis names."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, logical_to_mesh_spec(spec, rules)),
        logical_axes(abstract_params),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def check_divisible(abstract_params: dict, shardings: dict) -> None:
    """ConfigError naming the first parameter whose sharded dimension the mesh does not divide."""
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    for (path, leaf), sharding in zip(flat_params, jax.tree.leaves(shardings), strict=True):
        for size, axes in zip(leaf.shape, sharding.spec, strict=False):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            parts = int(np.prod([sharding.mesh.shape[a] for a in axes]))
            if size % parts:
                raise ConfigError(
                    f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape} cannot be split "
                    f"{parts} ways over mesh axes {axes}; change config.mesh or the model sizes"
                )


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree of arrays (or ShapeDtypeStructs) under `shardings`."""
    leaves, shardings = jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)
    return sum(
        int(np.prod(sharding.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
        for leaf, sharding in zip(leaves, shardings, strict=True)
    )


def optimizer_shardings(tx: Any, abstract_opt_state: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Optimizer state sharded like the params it tracks; scalars (e.g. count) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_opt_state,
        params_sharding,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over the data-parallel mesh axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def process_rows(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, np.ndarray]:
    """This process's rows of a global batch (its block, see mesh.process_batch_block)."""
    index, count = process_batch_block(mesh)
    return {name: np.array_split(value, count)[index] for name, value in batch.items()}


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's rows of a global batch into global jax.Arrays on the mesh."""
    sharding = batch_sharding(mesh)
    _, num_blocks = process_batch_block(mesh)

    def to_global(local: np.ndarray) -> jax.Array:
        global_shape = (local.shape[0] * num_blocks, *local.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return {name: to_global(np.asarray(value)) for name, value in batch.items()}
