"""optax optimizer and learning-rate schedule from the config's `train` section."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from fmjax.errors import ConfigError


# Parameters never decayed (BERT/GPT convention): every bias (`bias`, BERT's `mlm_bias`, ...)
# and every LayerNorm parameter (`scale`, `bias`); also the contrastive logit scale.
def is_decayed(name: str | None) -> bool:
    """Whether AdamW decays the parameter whose (last) attribute name is `name`."""
    return not (name is None or name == "scale" or name.endswith("bias"))


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then linear, cosine or constant decay to the end."""
    peak = train_config.learning_rate
    warmup = int(train_config.warmup_steps)
    decay_steps = max(int(train_config.num_steps) - warmup, 1)
    end = peak * train_config.end_learning_rate_factor
    decays = {
        "linear": lambda: optax.linear_schedule(peak, end, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak),
        "constant": lambda: optax.constant_schedule(peak),
    }
    if train_config.schedule not in decays:
        raise ConfigError(
            f"unknown train.schedule {train_config.schedule!r}; use one of {sorted(decays)}"
        )
    warmup_schedule = optax.linear_schedule(0.0, peak, max(warmup, 1))
    return optax.join_schedules([warmup_schedule, decays[train_config.schedule]()], [warmup])


def _decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: is_decayed(getattr(path[-1], "key", None)), params
    )


def applied_learning_rate(schedule: optax.Schedule, opt_state: Any) -> Any:
    """The learning rate of the optimizer's next update: the schedule at the optimizer's own
    step count, which a skipped non-finite step does not advance (the train state's step does)."""
    count = optax.tree_utils.tree_get(
        opt_state,
        "count",
        filtering=lambda path, _: getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState",
    )
    return schedule(count)


def trainable_names(train_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The top-level parameter names of train.trainable ("head,encoder"); () = every parameter."""
    text = str(train_config.get("trainable", "") or "")
    return tuple(name.strip() for name in text.split(",") if name.strip())


def trainable_mask(params: Any, train_config: ml_collections.ConfigDict) -> Any:
    """A bool per parameter: whether train.trainable lets it train (ConfigError on a name that
    is no top-level parameter of the model)."""
    names = trainable_names(train_config)
    if names and isinstance(params, dict):
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ConfigError(
                f"train.trainable names {unknown}, not top-level parameters of the model "
                f"({sorted(params)}); list some of those, or '' for all"
            )
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not names or getattr(path[0], "key", None) in names, params
    )


def stop_frozen_gradients(params: Any, train_config: ml_collections.ConfigDict) -> Any:
    """The params with a stop_gradient on those train.trainable freezes, so the backward pass
    through them is never computed (a linear probe costs a forward of the encoder)."""
    if not trainable_names(train_config):
        return params
    return jax.tree.map(
        lambda leaf, trains: leaf if trains else jax.lax.stop_gradient(leaf),
        params,
        trainable_mask(params, train_config),
    )


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule; with train.trainable set,
    the other parameters' updates are zeroed (e.g. a linear probe: the encoder never moves)."""
    optimizer = _adamw(train_config)
    if not trainable_names(train_config):
        return optimizer
    # Zeroed after AdamW rather than split off with multi_transform: the optimizer state keeps
    # the params' tree (so it shards like them); frozen moments stay 0 (their gradients are
    # stopped), and the zeroing also drops AdamW's weight decay of frozen params.
    return optax.chain(
        optimizer,
        optax.masked(
            optax.set_to_zero(),
            lambda params: jax.tree.map(
                lambda trains: not trains, trainable_mask(params, train_config)
            ),
        ),
    )


def _adamw(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    chain = []
    if train_config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    chain.append(
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=train_config.adam_b1,
            b2=train_config.adam_b2,
            eps=train_config.adam_eps,
            weight_decay=train_config.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*chain)
