"""Memory knobs: remat and scan over layers give the numbers of the plain model, gradient
accumulation gives the update of the whole batch, and all of them shard like the params."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fmjax.config import check_workdir, validate_config
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models import build_model
from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import shard_batch, sharding_context
from fmjax.params_io import stack_layers, unstack_layers
from fmjax.tasks import build_task
from fmjax.train.generate import generate_ids
from fmjax.train.step import build_program

STACKS = {"bert": "encoder", "gpt": "decoder", "vit": "encoder"}


def smoke_config(name: str, **model_fields):
    """The experiment's smoke preset at test size: 16-token rows, 4 heads, float32."""
    config = experiment_config(name, "smoke")
    config.model.update(compute_dtype="float32", num_heads=4, head_dim=16, **model_fields)
    if "seq_len" in config.data:
        config.data.seq_len = 16
    if "max_predictions" in config.task:
        config.task.max_predictions = 4
    return config


def build(model_config, seed: int = 0) -> nnx.Module:
    with nnx.use_eager_sharding(False):
        return build_model(model_config, nnx.Rngs(seed))


def to_scan_layout(params: dict, stack: str) -> dict:
    """Unrolled params -> the same weights in the scan_layers=True layout."""
    stacked = stack_layers(params[stack]["layers"])
    return {**params, stack: {**params[stack], "layers": stacked}}


def with_params(model: nnx.Module, params: dict) -> nnx.Module:
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def random_batch(config, batch_size: int, seed: int) -> dict:
    """A batch of the task's layout with random contents; rows hold different numbers of
    target tokens, so microbatches have different loss counts."""
    rng = np.random.default_rng(seed)
    spec = build_task(config).batch_spec(batch_size)
    model = config.model
    if config.task.name == "image_classification":
        return {
            "images": rng.normal(size=spec["images"].shape).astype(np.float32),
            "labels": rng.integers(0, model.num_classes, batch_size).astype(np.int32),
            "weights": (rng.random(batch_size) < 0.8).astype(np.float32),
        }
    length = spec["input_ids"].shape[1]
    ids = rng.integers(1, model.vocab_size, (batch_size, length)).astype(np.int32)
    keep = rng.random((batch_size, 1)) * 0.9 + 0.1  # per-row density of weighted targets
    if config.task.name == "causal_lm":
        return {
            "input_ids": ids,
            "target_ids": np.roll(ids, -1, axis=1),
            "segment_ids": np.ones_like(ids),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape).copy(),
            "loss_weights": (rng.random(ids.shape) < keep).astype(np.float32),
        }
    predictions = spec["masked_ids"].shape[1]
    return {
        "input_ids": ids,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
        "masked_positions": rng.integers(0, length, (batch_size, predictions)).astype(np.int32),
        "masked_ids": rng.integers(1, model.vocab_size, (batch_size, predictions)).astype(np.int32),
        "masked_weights": (rng.random((batch_size, predictions)) < keep).astype(np.float32),
    }


def train_on_mesh(config, mesh_shape: dict, num_steps: int, init_params=None):
    """(initial params, params, per-step metrics) of num_steps train steps on random batches;
    init_params (a pure dict) replaces the initialization."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_shape)
    task = build_task(config)
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    validate_config(config, len(devices))
    mesh = make_mesh(config.mesh, devices)
    with sharding_context(config, mesh):
        program = build_program(config, task, mesh)
        state = program.init_state()
        if init_params is not None:
            state["params"] = jax.device_put(init_params, program.state_shardings["params"])
        initial = jax.device_get(state["params"])
        metrics = []
        for step in range(num_steps):
            batch = shard_batch(random_batch(config, config.train.batch_size, step), mesh)
            state, step_metrics = program.train_step(state, batch)
            metrics.append(jax.device_get(step_metrics))
        return initial, jax.device_get(state["params"]), metrics


# --- remat and scan over layers: the plain model's numbers -------------------------------


@pytest.mark.parametrize("remat,scan_layers", [("full", False), ("dots_saveable", True)])
def test_remat_wraps_every_block_in_a_checkpoint(remat, scan_layers):
    config = smoke_config("gpt_tiny.py", vocab_size=97, remat=remat, scan_layers=scan_layers)
    model = build(config.model)
    ids = jnp.ones((2, 8), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda: model(ids, ids, ids, deterministic=True))())
    # Once per block unrolled, once in the scan body with scan_layers.
    assert jaxpr.count("remat2") == (1 if scan_layers else config.model.num_layers)
    config.model.remat = "none"
    model = build(config.model)
    assert "remat2" not in str(jax.make_jaxpr(lambda: model(ids, ids, ids, deterministic=True))())


def bert_loss_and_grads(config, params: dict | None = None):
    """(params, loss, grads) of a dropout-on MLM loss of the model of `config` on a fixed batch
    and dropout key (the params of `config` unless given)."""
    task = build_task(config)
    batch = jax.tree.map(jnp.asarray, random_batch(config, 4, seed=0))
    graphdef, state = nnx.split(build(config.model))
    params = nnx.to_pure_dict(state) if params is None else params

    def loss(params):
        model = nnx.merge(graphdef, params)
        rngs = nnx.Rngs(dropout=jax.random.key(7))  # dropout on: the rng stream must match
        return task.loss_and_metrics(model, batch, deterministic=False, rngs=rngs)[0]

    return params, *jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def plain_bert_grads():
    config = smoke_config("bert_tiny.py", vocab_size=97, dropout_rate=0.1)
    return config, *bert_loss_and_grads(config)


@pytest.mark.parametrize("remat,scan_layers", [("dots_saveable", False), ("full", True)])
def test_remat_and_scan_give_the_gradients_of_the_plain_stack(plain_bert_grads, remat, scan_layers):
    config, params, loss, grads = plain_bert_grads
    config = config.copy_and_resolve_references()
    config.model.update(remat=remat, scan_layers=scan_layers)
    layout = (lambda tree: to_scan_layout(tree, "encoder")) if scan_layers else (lambda tree: tree)
    _, knobs_loss, knobs_grads = bert_loss_and_grads(config, layout(params))
    np.testing.assert_allclose(knobs_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(knobs_grads), jax.tree.leaves(layout(grads)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_unknown_remat_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="model.remat must be one of"):
        build(smoke_config("bert_tiny.py", remat="selective").model)


# --- scan over layers -----------------------------------------------------------------------


def forward(family: str, model: nnx.Module, config):
    """The model's output on a random batch, with dropout."""
    batch = jax.tree.map(jnp.asarray, random_batch(config, 3, seed=1))
    if family == "gpt":
        args = ("input_ids", "positions", "segment_ids")
    else:
        args = ("images",)
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, inputs):
        rngs = nnx.Rngs(dropout=jax.random.key(3))
        return nnx.merge(graphdef, state)(*inputs, deterministic=False, rngs=rngs)

    return apply(state, [batch[a] for a in args])


@pytest.mark.parametrize("family,experiment", [("gpt", "gpt_tiny.py"), ("vit", "vit_tiny.py")])
def test_scan_layers_equals_the_unrolled_stack(family, experiment):
    config = smoke_config(experiment, num_layers=2, dropout_rate=0.1)
    if family == "gpt":
        config.model.vocab_size = 97
    unrolled = build(config.model)
    params = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    scan_config = config.model.copy_and_resolve_references()
    scan_config.scan_layers = True
    scanned = build(scan_config, seed=1)  # other init: the weights come from `unrolled`
    stack = STACKS[family]
    stacked = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))[stack]["layers"]
    assert jax.tree.leaves(stacked)[0].shape[0] == config.model.num_layers
    scanned = with_params(scanned, to_scan_layout(params, stack))
    np.testing.assert_allclose(  # with dropout: the rng stream is threaded through the scan
        forward(family, scanned, config),
        forward(family, unrolled, config),
        rtol=1e-5,
        atol=1e-6,
    )
    restored = unstack_layers(stack_layers(params[stack]["layers"]))
    jax.tree.map(np.testing.assert_array_equal, restored, params[stack]["layers"])


def test_scan_layers_kv_cache_generation_equals_unrolled():
    config = smoke_config("gpt_tiny.py", vocab_size=97, position_embedding="rotary")
    unrolled = build(config.model)
    scan_config = config.model.copy_and_resolve_references()
    scan_config.scan_layers = True
    params = to_scan_layout(nnx.to_pure_dict(nnx.state(unrolled, nnx.Param)), "decoder")
    scanned = with_params(build(scan_config), params)
    cache = scanned.init_cache(2, 16)["layers"]
    assert cache["key"].shape == (2, 2, 16, 4, 16)  # [layers, B, S, heads, head_dim]
    prompts = [[5, 9, 3, 17], [8]]
    kwargs = dict(max_new_tokens=6, temperature=1.0, top_k=20, seed=3)
    np.testing.assert_array_equal(
        generate_ids(*nnx.split(scanned), prompts, **kwargs),
        generate_ids(*nnx.split(unrolled), prompts, **kwargs),
    )


def test_scanned_params_and_optimizer_state_shard_like_the_unrolled_ones():
    config = smoke_config("gpt_tiny.py", scan_layers=True)
    config.mesh.update(data=1, fsdp=2, tensor=4)
    mesh = make_mesh(config.mesh)
    with sharding_context(config, mesh):
        program = build_program(config, build_task(config), mesh)
    params = program.state_shardings["params"]
    layers = params["decoder"]["layers"]
    assert layers["mlp"]["wi"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert layers["mlp"]["wo"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert layers["attention"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)
    assert layers["attention"]["out"]["kernel"].spec == P(None, "tensor", None, "fsdp")
    # AdamW's moments: every leaf sharded exactly like the parameter it tracks.
    adam = program.state_shardings["opt_state"][1][0]
    for moments in (adam.mu, adam.nu):
        for moment, param in zip(jax.tree.leaves(moments), jax.tree.leaves(params), strict=True):
            assert moment == param


# --- gradient accumulation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_config():
    config = smoke_config("bert_tiny.py", vocab_size=128, dropout_rate=0.0)
    config.model.attention_dropout_rate = 0.0  # dropout masks are the one thing that differs
    config.train.update(batch_size=16, warmup_steps=1)
    return config


@pytest.fixture(scope="module")
def big_batch_run(mlm_config):
    return train_on_mesh(mlm_config, {"data": 2, "fsdp": 2, "tensor": 2}, num_steps=3)


def test_grad_accumulation_equals_the_big_batch(mlm_config, big_batch_run):
    config = mlm_config.copy_and_resolve_references()
    config.train.grad_accum_steps = 4  # 4 microbatches of 4 rows, 1 per data-parallel device
    _, params, metrics = train_on_mesh(config, {"data": 2, "fsdp": 2, "tensor": 2}, num_steps=3)
    _, big_params, big_metrics = big_batch_run
    for step, (got, want) in enumerate(zip(metrics, big_metrics, strict=True)):
        for name in ("loss", "accuracy", "grad_norm"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=f"{step} {name}")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(big_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The microbatches hold different numbers of masked tokens, so a mean of their mean losses
    # would weight tokens unequally: the count weighting is what makes the results equal.
    weights = random_batch(config, 16, 0)["masked_weights"]
    per_microbatch = weights.reshape(4, 4, -1).sum(axis=(0, 2))  # rows i, i + 4, i + 8, i + 12
    assert np.ptp(per_microbatch) > 0


def test_every_knob_on_a_tensor_and_fsdp_mesh_equals_the_plain_run(mlm_config, big_batch_run):
    config = mlm_config.copy_and_resolve_references()
    config.model.update(scan_layers=True, remat="dots_saveable")
    config.train.grad_accum_steps = 2
    initial, big_params, big_metrics = big_batch_run
    mesh_shape = {"data": 1, "fsdp": 2, "tensor": 4}
    init_params = to_scan_layout(initial, "encoder")
    _, params, metrics = train_on_mesh(config, mesh_shape, 3, init_params)
    for got, want in zip(metrics, big_metrics, strict=True):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    expected = to_scan_layout(big_params, "encoder")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_grad_accumulation_config_errors(mlm_config):
    config = mlm_config.copy_and_resolve_references()
    config.train.grad_accum_steps = 3
    with pytest.raises(ConfigError, match="grad_accum_steps=3"):
        validate_config(config, 8)
    config.train.grad_accum_steps = 4
    with pytest.raises(ConfigError, match="multiple of 32"):
        validate_config(config, 8)  # 8-way data parallel: 16 rows make no 4 microbatches
    config.mesh.update(data=1, fsdp=1, tensor=1)
    task = build_task(config)
    task.supports_grad_accum = False  # e.g. a contrastive loss over the whole batch
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with (
        sharding_context(config, mesh),
        pytest.raises(ConfigError, match="does not split into microbatches"),
    ):
        build_program(config, task, mesh)


def test_a_run_resumes_with_another_remat_but_not_another_layout(mlm_config, tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(json.loads(mlm_config.to_json()), f)
    config = mlm_config.copy_and_resolve_references()
    config.model.remat = "full"
    check_workdir(config, str(tmp_path))  # memory knob only: the same parameters
    config.model.scan_layers = True
    with pytest.raises(ConfigError, match="different model"):
        check_workdir(config, str(tmp_path))
