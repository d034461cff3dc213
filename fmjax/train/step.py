"""The sharded, jit-compiled train and eval steps, built for any model, task and mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmjax.config import BATCH_MESH_AXES
from fmjax.errors import ConfigError
from fmjax.models import build_model
from fmjax.parallel.sharding import (
    axis_rules,
    batch_sharding,
    check_divisible,
    optimizer_shardings,
    param_shardings,
    process_rows,
    shard_batch,
)
from fmjax.tasks.base import Task
from fmjax.train.optim import (
    applied_learning_rate,
    learning_rate_schedule,
    make_optimizer,
    stop_frozen_gradients,
)

# Train state: a plain dict {"step": int32 scalar, "params": pure dict, "opt_state": optax state},
# so Orbax, jit shardings and tree utilities see ordinary pytrees.
TrainState = dict[str, Any]


@dataclasses.dataclass
class TrainProgram:
    """Everything a run needs to step: shardings, abstract state and the jitted functions."""

    mesh: Mesh
    graphdef: Any
    optimizer: optax.GradientTransformation
    state_shardings: TrainState
    batch_sharding: NamedSharding
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings (restore target)
    init_state: Callable[[], TrainState]
    train_step: Callable  # jitted (state, batch) -> (state, metrics); state is donated
    eval_step: Callable  # jitted (params, batch) -> metrics
    _predict_fns: dict = dataclasses.field(default_factory=dict, repr=False)

    def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A global batch (every process holds all rows) as global arrays on the mesh."""
        return shard_batch(process_rows(batch, self.mesh), self.mesh)

    def mean_metrics(self, params: Any, batches: Iterable[dict]) -> dict[str, float]:
        """The eval step's (sum, count) metrics added up over global batches, as sum / count."""
        return summarize([self.eval_step(params, self.shard(batch)) for batch in batches])

    def predict(
        self, params: Any, batches: Iterable[dict], outputs: Callable[[nnx.Module, dict], Any]
    ) -> Any:
        """`outputs(model, batch)` (a tree of [B, ...] arrays) over every global batch, jitted on
        the mesh, as numpy arrays of the real rows (weights > 0 when the batch has weights),
        concatenated in order: the whole split's predictions, on every process."""
        if outputs not in self._predict_fns:

            def apply(params, batch):
                return outputs(nnx.merge(self.graphdef, params), batch)

            self._predict_fns[outputs] = jax.jit(
                apply,
                in_shardings=(self.state_shardings["params"], self.batch_sharding),
                out_shardings=NamedSharding(self.mesh, PartitionSpec()),
            )
        predict_fn, results = self._predict_fns[outputs], []
        for batch in batches:
            result = jax.device_get(predict_fn(params, self.shard(batch)))
            if "weights" in batch:
                real = np.asarray(batch["weights"]) > 0
                result = jax.tree.map(lambda rows, real=real: np.asarray(rows)[real], result)
            results.append(result)
        return jax.tree.map(lambda *parts: np.concatenate(parts), *results)


def build_program(config: ml_collections.ConfigDict, task: Task, mesh: Mesh) -> TrainProgram:
    """Builds the model abstractly, derives all shardings from logical rules, jits the steps.

    Call under `fmjax.parallel.sharding.sharding_context(config, mesh)` (fmjax.train.run.open_run
    enters it once per run): nnx.eval_shape gives every Variable a sharding from the rules in
    context, and activation constraints in the model resolve against the mesh when the steps
    are traced.
    """
    seed = int(config.seed)
    rules = axis_rules(config)
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: build_model(config.model, nnx.Rngs(seed)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    params_sharding = param_shardings(abstract_params, mesh, rules)
    abstract_params = nnx.to_pure_dict(abstract_params)
    check_divisible(abstract_params, params_sharding)
    optimizer = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = {
        "step": replicated,
        "params": params_sharding,
        "opt_state": optimizer_shardings(optimizer, abstract_opt_state, params_sharding, mesh),
    }
    abstract_state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        {
            "step": jax.ShapeDtypeStruct((), jnp.int32),
            "params": abstract_params,
            "opt_state": abstract_opt_state,
        },
        state_shardings,
    )

    def init_state() -> TrainState:
        with nnx.use_eager_sharding(False):
            model = build_model(config.model, nnx.Rngs(seed))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params)}

    def loss_fn(params, batch, rng):
        model = nnx.merge(graphdef, stop_frozen_gradients(params, config.train))
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        return task.loss_and_metrics(model, batch, deterministic=rng is None, rngs=rngs)

    accum_steps = grad_accum_steps(config, task)
    if accum_steps == 1:
        loss_and_grads = jax.value_and_grad(loss_fn, has_aux=True)
    else:
        loss_and_grads = accumulated_loss_and_grads(
            loss_fn, accum_steps, params_sharding, NamedSharding(mesh, MICROBATCH_SPEC)
        )

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step = state["step"]
        rng = jax.random.fold_in(jax.random.key(seed), step)
        (loss, metrics), grads = loss_and_grads(state["params"], batch, rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient skips the update (params and optimizer state unchanged);
        # the trainer counts these steps and, with train.nonfinite="halt", stops the run.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state),
            (state["params"], state["opt_state"]),
        )
        one = jnp.float32(1.0)
        metrics = dict(
            metrics,
            grad_norm=(jnp.where(finite, grad_norm, 0.0), finite.astype(jnp.float32)),
            # the rate the update used; a skipped step applied none (optim.applied_learning_rate)
            learning_rate=(
                jnp.where(finite, applied_learning_rate(schedule, state["opt_state"]), 0.0),
                finite.astype(jnp.float32),
            ),
            nonfinite=(1.0 - finite.astype(jnp.float32), one),
        )
        return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

    def eval_step(params, batch: dict) -> dict:
        return loss_fn(params, batch, None)[1]

    batches = batch_sharding(mesh)
    return TrainProgram(
        mesh=mesh,
        graphdef=graphdef,
        optimizer=optimizer,
        state_shardings=state_shardings,
        batch_sharding=batches,
        abstract_state=abstract_state,
        init_state=jax.jit(init_state, out_shardings=state_shardings),
        train_step=jax.jit(
            train_step,
            in_shardings=(state_shardings, batches),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            eval_step, in_shardings=(params_sharding, batches), out_shardings=replicated
        ),
    )


# Microbatches [accum_steps, batch / accum_steps, ...]: examples split like the batch.
MICROBATCH_SPEC = PartitionSpec(None, BATCH_MESH_AXES)


def grad_accum_steps(config: ml_collections.ConfigDict, task: Task) -> int:
    """train.grad_accum_steps, checked against the task (validate_config checks the batch)."""
    steps = int(config.train.get("grad_accum_steps", 1))
    if steps < 1:
        raise ConfigError(f"train.grad_accum_steps must be >= 1, got {steps}")
    if steps > 1 and not task.supports_grad_accum:
        raise ConfigError(
            f"task {task.name!r} does not split into microbatches (its loss couples the "
            "examples of the whole batch); set train.grad_accum_steps=1"
        )
    return steps


def split_microbatches(batch: dict, num: int, sharding: NamedSharding) -> dict:
    """[B, ...] -> [num, B / num, ...] with microbatch i = rows i, i + num, i + 2 num, ...

    Interleaving keeps every device's rows on that device: each holds a contiguous block of
    B / (data x fsdp) rows, which splits into num microbatch slices without any communication.
    """

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(split, batch)


def accumulated_loss_and_grads(
    loss_fn: Callable, num: int, params_sharding: Any, microbatch_sharding: NamedSharding
) -> Callable:
    """Like jax.value_and_grad(loss_fn, has_aux=True), over `num` microbatches in a lax.scan,
    holding one microbatch's activations at a time; equal to the whole batch's result.

    A task's loss is the mean over the count of its "loss" metric (sum, count), e.g. masked
    tokens for MLM, and microbatches hold different counts, so the mean of microbatch means is
    not the batch mean. Each microbatch adds the gradient of loss * count (its loss sum); the
    total is divided by the batch's count, as the batch's own mean would. (sum, count) metrics
    add up. Microbatch i draws dropout with fold_in(rng, i), so dropout masks (only) differ
    from the unsplit batch's.
    """

    def weighted_loss(params, batch, rng):
        loss, metrics = loss_fn(params, batch, rng)
        count = jax.lax.stop_gradient(metrics["loss"][1])
        return loss * count, metrics

    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

    def loss_and_grads(params, batch, rng):
        def add_microbatch(grads_sum, indexed_microbatch):
            index, microbatch = indexed_microbatch
            (loss_sum, metrics), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return jax.lax.with_sharding_constraint(grads_sum, params_sharding), (loss_sum, metrics)

        zeros = jax.lax.with_sharding_constraint(
            jax.tree.map(jnp.zeros_like, params), params_sharding
        )
        microbatches = (jnp.arange(num), split_microbatches(batch, num, microbatch_sharding))
        grads_sum, (loss_sums, metrics) = jax.lax.scan(add_microbatch, zeros, microbatches)
        metrics = jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics)
        count = jnp.maximum(metrics["loss"][1], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads_sum)
        return (jnp.sum(loss_sums) / count, metrics), grads

    return loss_and_grads


def abstract_batch(task: Task, batch_size: int, sharding: NamedSharding) -> dict:
    """The task's batch as ShapeDtypeStructs with the batch sharding (for AOT lowering)."""
    return {
        name: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)
        for name, spec in task.batch_spec(batch_size).items()
    }


def summarize(metrics: list[dict]) -> dict[str, float]:
    """Adds up (sum, count) metrics over steps or batches and returns sum / count."""
    totals = jax.device_get(metrics)
    names = totals[0].keys()
    return {
        name: float(sum(m[name][0] for m in totals) / max(sum(m[name][1] for m in totals), 1e-9))
        for name in names
    }
