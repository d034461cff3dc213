"""Weighted softmax cross-entropy and accuracy in float32, shared by the tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fmjax.tasks.base import Metrics


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy per position [...] of logits [..., C] and int labels [...], in
    float32; with label_smoothing > 0 the target puts that much mass uniformly on all classes."""
    logits = logits.astype(jnp.float32)
    if label_smoothing > 0.0:
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
        return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, Metrics]:
    """(mean cross-entropy over the weighted positions, {"loss", "accuracy"} as (sum, count)).

    Weights 0 mark padding (unmasked tokens, padding rows); accuracy is top-1 of the logits.
    """
    logits = logits.astype(jnp.float32)
    loss_sum = jnp.sum(cross_entropy(logits, labels, label_smoothing) * weights)
    count = jnp.sum(weights)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, {"loss": (loss_sum, count), "accuracy": (correct, count)}
