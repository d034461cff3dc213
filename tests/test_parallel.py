"""Sharding: the same numbers on every mesh, and golden PartitionSpecs for bert_base on the
meshes of GOLDEN_MESHES, with the params split evenly."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from sharding_checks import (
    GOLDEN_MESHES,
    assert_golden_partition_specs,
    assert_params_split_evenly,
    build_on_mesh,
    losses_on_mesh,
)

from fmjax.experiments import experiment_config
from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import sharding_context
from fmjax.tasks import build_task
from fmjax.train.step import build_program


def random_mlm_batch(task, batch_size: int, vocab_size: int, seed: int = 0) -> dict:
    """A batch with the MLM layout and random contents (numerics checks only)."""
    rng = np.random.default_rng(seed)
    spec = task.batch_spec(batch_size)
    length = spec["input_ids"].shape[1]
    predictions = spec["masked_ids"].shape[1]
    lengths = rng.integers(length // 2, length + 1, size=batch_size)
    attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    positions = np.sort(
        np.stack([rng.choice(n, size=predictions, replace=False) for n in lengths]), axis=1
    )
    return {
        "input_ids": rng.integers(5, vocab_size, size=(batch_size, length), dtype=np.int32)
        * attention_mask,
        "token_type_ids": np.zeros((batch_size, length), np.int32),
        "attention_mask": attention_mask,
        "masked_positions": positions.astype(np.int32),
        "masked_ids": rng.integers(5, vocab_size, size=(batch_size, predictions), dtype=np.int32),
        "masked_weights": (rng.random((batch_size, predictions)) < 0.9).astype(np.float32),
    }


def mlm_losses(config, mesh_shape: dict) -> list[float]:
    """The losses of 3 steps on random MLM batches on `mesh_shape`, the params really sharded."""

    def random_batch(task, step):
        return random_mlm_batch(task, config.train.batch_size, config.model.vocab_size, step)

    def assert_rules_shard_the_params(state):
        kernel = state["params"]["encoder"]["layers"][0]["mlp"]["wi"]["kernel"]
        assert kernel.sharding.spec == P("fsdp", "tensor")

    return losses_on_mesh(config, mesh_shape, random_batch, 3, assert_rules_shard_the_params)


@pytest.fixture(scope="module")
def smoke_config():
    config = experiment_config("bert_tiny.py", "smoke")
    config.model.update(compute_dtype="float32", vocab_size=512, num_heads=4, head_dim=16)
    config.model.update(dropout_rate=0.1, attention_dropout_rate=0.1)
    config.train.batch_size = 8
    return config


@pytest.fixture(scope="module")
def single_device_losses(smoke_config):
    return mlm_losses(smoke_config, {"data": 1, "fsdp": 1, "tensor": 1})


@pytest.mark.parametrize(
    "mesh_shape",
    [
        {"data": 8, "fsdp": 1, "tensor": 1},
        {"data": 1, "fsdp": 8, "tensor": 1},
        {"data": 2, "fsdp": 1, "tensor": 4},
        {"data": 2, "fsdp": 2, "tensor": 2},
        {"data": 1, "fsdp": 2, "tensor": 4},
    ],
    ids=["data8", "fsdp8", "data2xtensor4", "data2xfsdp2xtensor2", "fsdp2xtensor4"],
)
def test_sharded_training_matches_single_device(smoke_config, single_device_losses, mesh_shape):
    losses = mlm_losses(smoke_config, mesh_shape)
    assert losses[-1] < losses[0] + 1.0  # the steps really trained
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-5, atol=2e-5)


def test_fsdp_parameters_and_optimizer_state_are_split(smoke_config):
    config = smoke_config.copy_and_resolve_references()
    config.mesh.update(data=1, fsdp=8, tensor=1)
    mesh = make_mesh(config.mesh)
    with sharding_context(config, mesh):
        program = build_program(config, build_task(config), mesh)
    params = program.state_shardings["params"]
    assert params["encoder"]["layers"][0]["mlp"]["wi"]["kernel"].spec == P("fsdp", "tensor")
    # AdamW's moments follow the params they track; the step counters are replicated.
    opt_specs = {s.spec for s in jax.tree_util.tree_leaves(program.state_shardings["opt_state"])}
    assert P("fsdp", "tensor") in opt_specs and P() in opt_specs


# Mesh PartitionSpec of every bert_base parameter under the default rules; "*" = any layer.
BERT_BASE_GOLDEN_SPECS = {
    "token_embed/embedding": P("tensor", "fsdp"),
    "position_embed/embedding": P(None, "fsdp"),
    "type_embed/embedding": P(None, "fsdp"),
    "embed_norm/scale": P(None),
    "embed_norm/bias": P(None),
    "encoder/layers/*/attention/query/kernel": P("fsdp", "tensor", None),
    "encoder/layers/*/attention/query/bias": P("tensor", None),
    "encoder/layers/*/attention/key/kernel": P("fsdp", "tensor", None),
    "encoder/layers/*/attention/key/bias": P("tensor", None),
    "encoder/layers/*/attention/value/kernel": P("fsdp", "tensor", None),
    "encoder/layers/*/attention/value/bias": P("tensor", None),
    "encoder/layers/*/attention/out/kernel": P("tensor", None, "fsdp"),
    "encoder/layers/*/attention/out/bias": P("fsdp"),
    "encoder/layers/*/attention_norm/scale": P(None),
    "encoder/layers/*/attention_norm/bias": P(None),
    "encoder/layers/*/mlp/wi/kernel": P("fsdp", "tensor"),
    "encoder/layers/*/mlp/wi/bias": P("tensor"),
    "encoder/layers/*/mlp/wo/kernel": P("tensor", "fsdp"),
    "encoder/layers/*/mlp/wo/bias": P("fsdp"),
    "encoder/layers/*/mlp_norm/scale": P(None),
    "encoder/layers/*/mlp_norm/bias": P(None),
    "mlm_transform/kernel": P("fsdp", None),
    "mlm_transform/bias": P(None),
    "mlm_norm/scale": P(None),
    "mlm_norm/bias": P(None),
    "mlm_bias": P("tensor"),
}


@pytest.mark.parametrize("mesh_shape", GOLDEN_MESHES.values(), ids=GOLDEN_MESHES.keys())
def test_bert_base_partition_specs_are_golden(mesh_shape):
    config = experiment_config("bert_base.py")
    config.model.compute_dtype = "float32"
    if mesh_shape["tensor"] == 4:
        config.model.vocab_size = 30528  # 30522 does not split 4 ways; pad to a multiple of 64
    program = build_on_mesh(config, mesh_shape)
    assert_golden_partition_specs(program, BERT_BASE_GOLDEN_SPECS, num_layer_params=12 * 16)
    assert_params_split_evenly(program)
