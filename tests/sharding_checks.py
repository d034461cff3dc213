"""Shared checks of sharded programs: golden parameter shardings (bert_base, gpt2_small) and
training losses on a given mesh (the same numbers on every mesh)."""

from collections.abc import Callable

import jax
import numpy as np
import pytest

from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import bytes_per_device, shard_batch, sharding_context
from fmjax.tasks import build_task
from fmjax.train.step import build_program

# The meshes the golden specs are checked on: the specs (rules) are the same on each; what
# changes is how many ways each axis splits, which every parameter must divide.
GOLDEN_MESHES = {
    "data2xfsdp2xtensor2": {"data": 2, "fsdp": 2, "tensor": 2},
    "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1},
    "fsdp2xtensor4": {"data": 1, "fsdp": 2, "tensor": 4},
}


def build_on_mesh(config, mesh_shape: dict):
    """The TrainProgram of `config` on a mesh of `mesh_shape` (nothing is allocated)."""
    config.mesh.update(mesh_shape)
    mesh = make_mesh(config.mesh)
    with sharding_context(config, mesh):
        return build_program(config, build_task(config), mesh)


def losses_on_mesh(
    config,
    mesh_shape: dict,
    batch_for_step: Callable[[object, int], dict],
    num_steps: int,
    check_state: Callable[[dict], None] | None = None,
) -> list[float]:
    """The mean loss of each of `num_steps` train steps of `config` on a mesh of `mesh_shape`
    (on its first devices); `batch_for_step(task, step)` gives a step's batch, `check_state`
    (if given) sees the initial state."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_shape)
    task = build_task(config)
    mesh = make_mesh(config.mesh, jax.devices()[: int(np.prod(list(mesh_shape.values())))])
    losses = []
    with sharding_context(config, mesh):
        program = build_program(config, task, mesh)
        state = program.init_state()
        if check_state is not None:
            check_state(state)
        for step in range(num_steps):
            batch = batch_for_step(task, step)
            state, metrics = program.train_step(state, shard_batch(batch, mesh))
            loss_sum, count = jax.device_get(metrics["loss"])
            losses.append(float(loss_sum / count))
    return losses


def assert_golden_partition_specs(program, golden: dict, num_layer_params: int) -> None:
    """Every parameter's PartitionSpec equals golden[name] ("*" = any layer index), the names
    are exactly golden's, and the layers hold num_layer_params arrays."""
    flat = jax.tree_util.tree_flatten_with_path(program.state_shardings["params"])[0]
    seen = {}
    for path, sharding in flat:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name = "/".join("*" if key.isdigit() else key for key in keys)
        seen.setdefault(name, set()).add(sharding.spec)
    assert sorted(seen) == sorted(golden)
    for name, specs in seen.items():
        assert specs == {golden[name]}, name
    layers = {p for p, _ in flat if "layers" in jax.tree_util.keystr(p)}
    assert len(layers) == num_layer_params


def assert_params_split_evenly(program, within: float = 0.1) -> None:
    """Per-device parameter bytes are within `within` of total / (fsdp x tensor): the params
    split over those axes and are copied over `data`; replicated norms and biases are the only
    excess."""
    abstract, shardings = program.abstract_state["params"], program.state_shardings["params"]
    total = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(abstract))
    per_device = bytes_per_device(abstract, shardings)
    model_parallel = program.mesh.shape["fsdp"] * program.mesh.shape["tensor"]
    assert per_device == pytest.approx(total / model_parallel, rel=within)
