"""Self-supervised image pairing (SimCLR, Chen et al. 2020): two augmented views of each image,
no labels; each view must find its partner among the other 2B - 1 views of the global batch.

The loss is SimCLR's NT-Xent, computed with the CLIP loss of fmjax/tasks/contrastive.py: the
[2B, 2B] cosine logits of all views (self-similarity masked out) with their columns rolled by B
put every view's partner on the diagonal, and the mean of the symmetric CLIP loss over its rows
is then the mean NT-Xent over the 2B views (the column term of row i is the row term of i's
partner, because the unrolled logits are symmetric). Eval: the same loss and partner-retrieval
accuracy over the seeded views of the held-out images, batch by batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.data.task_data import TaskData
from fmjax.errors import ConfigError
from fmjax.models.vit import num_patches, num_tokens
from fmjax.parallel.sharding import constrain
from fmjax.tasks.base import Metrics, Task
from fmjax.tasks.contrastive import LOGITS_AXES, clip_loss, similarity_logits
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops

MASKED_LOGIT = -1e9  # a view never counts itself (or a padding row) among the candidates


def partner_logits(
    first: jax.Array, second: jax.Array, weights: jax.Array, temperature: float
) -> jax.Array:
    """[2B, 2B] float32 logits of the unit-norm views [first; second], cosine / temperature,
    columns rolled by B so that row i's positive (its image's other view) is on the diagonal;
    self-pairs and pairs with a weight-0 (padding) image are MASKED_LOGIT."""
    views = jnp.concatenate([first, second], axis=0)
    columns = constrain(views, (None, None))  # every device's rows meet every view
    logits = similarity_logits(views, columns, jnp.float32(1.0 / temperature), jnp.float32(0.0))
    real = jnp.concatenate([weights, weights]) > 0
    keep = ~jnp.eye(views.shape[0], dtype=bool) & real[:, None] & real[None, :]
    logits = jnp.where(keep, logits, MASKED_LOGIT)
    return constrain(jnp.roll(logits, first.shape[0], axis=1), LOGITS_AXES)


class SelfSupervisedImagePairs(Task):
    """Pull the two views of an image together, push them from every other image's views."""

    name = "simclr"
    # The loss takes its negatives from the whole batch, which microbatches would shrink.
    supports_grad_accum = False

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = config.model
        self.image_shape = (int(model.image_size), int(model.image_size), int(model.num_channels))
        self.temperature = float(config.task.get("temperature", 0.5))
        if self.temperature <= 0:
            raise ConfigError(f"task.temperature must be > 0, got {self.temperature}")

    def build_data(self) -> TaskData:
        """Two augmented views of every image (see fmjax.data.images.build_view_data)."""
        from fmjax.data.images import build_view_data

        return build_view_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` images, two views each."""
        views = jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32)
        return {
            "first_views": views,
            "second_views": views,
            "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean NT-Xent over the real views and the fraction whose nearest view is the partner."""
        first, second = batch["first_views"], batch["second_views"]
        projections = model(
            jnp.concatenate([first, second], axis=0), deterministic=deterministic, rngs=rngs
        )
        first, second = jnp.split(projections, 2, axis=0)
        logits = partner_logits(first, second, batch["weights"], self.temperature)
        weights = jnp.concatenate([batch["weights"], batch["weights"]]).astype(jnp.float32)
        losses = clip_loss(logits)
        found = jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0])
        count = jnp.sum(weights)
        loss_sum = jnp.sum(losses * weights)
        metrics = {
            "loss": (loss_sum, count),
            "partner_accuracy": (jnp.sum(found * weights), count),
        }
        return loss_sum / jnp.maximum(count, 1.0), metrics

    def tokens_per_example(self) -> int:
        """Patches of both views of an image."""
        return 2 * num_patches(self.config.model)

    def train_flops_per_example(self) -> float:
        """Two views, each: the encoder (fmjax.tasks.flops) over T tokens, the patch embedding
        2 * N * P * d and the projection head 2 * d * h + 2 * h * D; plus each view's row of the
        [2B, 2B] logits, 2 * 2B * D (B = train.batch_size, the global batch)."""
        model = self.config.model
        patch_dim = model.patch_size**2 * model.num_channels
        hidden, out = model.projection_hidden_dim, model.projection_dim
        batch_size = int(self.config.train.batch_size)
        view = (
            2 * num_patches(model) * patch_dim * model.embed_dim
            + transformer_forward_flops(model, num_tokens(model))
            + 2 * model.embed_dim * hidden
            + 2 * hidden * out
            + 2 * 2 * batch_size * out
        )
        return TRAIN_FLOPS_PER_FORWARD * 2 * view
