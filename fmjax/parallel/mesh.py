"""Device mesh from the config's `mesh` section (axes data, fsdp, tensor)."""

from __future__ import annotations

import math

import jax
import ml_collections
from jax.sharding import AxisType, Mesh

from fmjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Axis sizes with the one -1 axis filled in; ConfigError when they don't fit the devices."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    unknown = [axis for axis, size in sizes.items() if size == -1]
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad or len(unknown) > 1:
        raise ConfigError(
            f"mesh axes must be positive sizes with at most one -1, got {sizes}; "
            "fix --config.mesh.data/fsdp/tensor"
        )
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if num_devices % known:
            raise ConfigError(
                f"mesh {sizes} does not divide the {num_devices} devices "
                f"({num_devices} is not a multiple of {known}); change --config.mesh.*"
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(
            f"mesh data*fsdp*tensor = {math.prod(sizes.values())} but there are {num_devices} "
            f"devices; set --config.mesh.* so the product is {num_devices} (or use -1 for one axis)"
        )
    return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (or `devices`), axes in Auto mode."""
    devices = jax.devices() if devices is None else devices
    sizes = resolve_mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )
