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


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule."""
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
