"""Device mesh from the config's `mesh` section (axes data, fsdp, tensor), one or many slices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from fmjax.errors import ConfigError

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


def resolve_dcn_shape(
    mesh_config: ml_collections.ConfigDict, sizes: dict[str, int]
) -> dict[str, int]:
    """Slices (or process groups) per axis from `mesh.dcn`; each must divide its axis size."""
    dcn_config = mesh_config.get("dcn") or {}
    dcn = {axis: int(dcn_config.get(axis, 1)) for axis in MESH_AXES}
    for axis, slices in dcn.items():
        if slices < 1 or sizes[axis] % slices:
            raise ConfigError(
                f"mesh.dcn.{axis}={slices} must be a positive divisor of mesh.{axis}="
                f"{sizes[axis]} (the axis's total size); fix --config.mesh.dcn.{axis}"
            )
    return dcn


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (or `devices`), axes in Auto mode.

    With `mesh.dcn` other than all ones, the mesh is hybrid: each axis is split into
    dcn x per-slice parts, the slow (DCN) part outermost, so collectives over an axis stay on
    the fast interconnect (ICI, NVLink) inside a slice wherever they can.
    """
    devices = jax.devices() if devices is None else devices
    sizes = resolve_mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    dcn = resolve_dcn_shape(mesh_config, sizes)
    if math.prod(dcn.values()) == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    ici = tuple(sizes[axis] // dcn[axis] for axis in MESH_AXES)
    device_array = hybrid_device_array(ici, tuple(dcn[axis] for axis in MESH_AXES), devices)
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def hybrid_device_array(
    ici_shape: Sequence[int], dcn_shape: Sequence[int], devices: Sequence[Any]
) -> np.ndarray:
    """Devices laid out as ici_shape * dcn_shape: one per-slice block per DCN mesh position.

    Slices are TPU slices (devices with several `slice_index` values, as
    mesh_utils.create_hybrid_device_mesh does), otherwise equal groups of consecutive
    processes (hosts on a GPU cluster: Slurm numbers the tasks of a node consecutively), and
    in a single process equal groups of its devices, standing in for slices so a multi-slice
    config can be checked with --mode=compile on one machine.
    """
    num_slices = math.prod(dcn_shape)
    slices = _slices(devices, num_slices)
    if num_slices != len(slices):
        raise ConfigError(
            f"mesh.dcn {dict(zip(MESH_AXES, dcn_shape, strict=True))} multiplies to {num_slices} "
            f"slices but the devices form {len(slices)}; make the product of mesh.dcn.* "
            f"{len(slices)}"
        )
    per_slice = [
        mesh_utils.create_device_mesh(ici_shape, group, allow_split_physical_axes=True)
        for group in slices
    ]
    blocks = np.empty(tuple(dcn_shape), dtype=object)
    for position, index in enumerate(np.ndindex(*dcn_shape)):
        blocks[index] = per_slice[position]
    return np.block(blocks.tolist())


def _slices(devices: Sequence[Any], num_slices: int) -> list[list[Any]]:
    """The devices grouped into slices: by slice_index, else by process, else evenly."""
    slice_ids = {getattr(device, "slice_index", None) for device in devices}
    if len(slice_ids) > 1:
        return [[d for d in devices if d.slice_index == key] for key in sorted(slice_ids)]
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    num_processes = len({d.process_index for d in devices})
    if num_processes > 1 and num_processes % num_slices:
        raise ConfigError(
            f"mesh.dcn.* multiplies to {num_slices} slices, which does not divide the "
            f"{num_processes} processes; make it a divisor of {num_processes} (e.g. the hosts)"
        )
    if len(ordered) % num_slices:
        raise ConfigError(
            f"mesh.dcn.* multiplies to {num_slices} slices, which does not divide the "
            f"{len(ordered)} devices; fix --config.mesh.dcn.*"
        )
    size = len(ordered) // num_slices
    return [ordered[i * size : (i + 1) * size] for i in range(num_slices)]


def process_row_blocks(process_grid: np.ndarray) -> list[list[int]]:
    """For each process, which blocks of a global batch its devices hold, in order.

    `process_grid`: the mesh's devices' process indices, shape (data, fsdp, tensor). The batch
    is split over data x fsdp (row block = data_index * fsdp + fsdp_index), replicated over
    tensor.
    """
    data, fsdp, _ = process_grid.shape
    blocks: list[set[int]] = [set() for _ in range(int(process_grid.max()) + 1)]
    for (d, f, _), process in np.ndenumerate(process_grid):
        blocks[process].add(d * fsdp + f)
    return [sorted(b) for b in blocks]


def process_batch_block(mesh: Mesh | None = None, process: int | None = None) -> tuple[int, int]:
    """(index, count): process `process` (default: this one) reads the index-th of `count`
    equal contiguous blocks of rows of every global batch; the one place that decides it.

    The rows are those its devices hold: the batch is split over data x fsdp and replicated over
    tensor, so the processes of one tensor group (tensor spanning processes, e.g. one process
    per GPU) share an index and read the same rows. `mesh` defaults to the one set with
    jax.set_mesh, and without one every process reads its own block. ConfigError when a
    process's devices hold rows that are not such a block.
    """
    process = jax.process_index() if process is None else process
    mesh = jax.sharding.get_mesh() if mesh is None else mesh
    if mesh is None or getattr(mesh, "empty", False):
        return process, jax.process_count()
    grid = np.vectorize(lambda d: d.process_index)(mesh.devices)
    blocks = process_row_blocks(grid)
    per_process = len(blocks[process])
    num_blocks = grid.shape[0] * grid.shape[1]
    for other, held in enumerate(blocks):
        first = held[0] if held else 0
        if (
            len(held) != per_process
            or first % per_process
            or held != list(range(first, first + per_process))
        ):
            raise ConfigError(
                f"with mesh {dict(mesh.shape)} process {other}'s devices hold batch blocks "
                f"{held} of {num_blocks}, not one contiguous block of {per_process}: order "
                "the mesh so that data/fsdp positions follow process order (mesh.dcn.*)"
            )
    return blocks[process][0] // per_process, num_blocks // per_process


def check_batch_rows_per_process(mesh: Mesh) -> None:
    """ConfigError unless every process's devices hold one contiguous block of batch rows."""
    process_batch_block(mesh, process=0)
