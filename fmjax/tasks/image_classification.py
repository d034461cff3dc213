"""Image classification (ViT): batch layout, cross-entropy, top-1 accuracy, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fmjax.models.vit import num_patches, num_tokens


class ImageClassification:
    """Predict one of model.num_classes labels per image; weights 0 mark padding rows."""

    name = "image_classification"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        model = config.model
        self.image_shape = (int(model.image_size), int(model.image_size), int(model.num_channels))
        self.num_classes = int(model.num_classes)
        self.label_smoothing = float(config.task.get("label_smoothing", 0.0))

    def build_data(self):
        """Augmented train batches and the full test split for eval (see fmjax.data.images)."""
        from fmjax.data.images import build_image_data

        return build_image_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` images."""
        return {
            "images": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        """Mean cross-entropy over weighted images, and (sum, count) loss and top-1 accuracy."""
        logits = model(batch["images"], deterministic=deterministic, rngs=rngs).astype(jnp.float32)
        labels, weights = batch["labels"], batch["weights"]
        targets = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        if self.label_smoothing > 0.0:
            targets = optax.smooth_labels(targets, self.label_smoothing)
        example_losses = optax.softmax_cross_entropy(logits, targets)
        loss_sum = jnp.sum(example_losses * weights)
        count = jnp.sum(weights)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
        loss = loss_sum / jnp.maximum(count, 1.0)
        return loss, {"loss": (loss_sum, count), "accuracy": (correct, count)}

    def tokens_per_example(self) -> int:
        """Patches per image (what tokens_per_s counts for images)."""
        return num_patches(self.config.model)

    def train_flops_per_example(self) -> float:
        """Model FLOPs of one training image (forward + backward = 3 x forward).

        Forward, counting 2 FLOPs per multiply-add and only matmuls (norms, softmax, pooling and
        the optimizer are ignored, as in the PaLM/MaxText MFU convention):
          patch embedding:     2 * N * P * d                       P = patch_size^2 * channels
          per token and layer: 2 * (4 * d * h * k + 2 * d * f)   q, k, v, out projections; MLP
                               + 2 * 2 * T * h * k                 Q·Kᵀ and probs·V
          head:                2 * d * C
        with N = patches, T = encoder tokens (N, + 1 with a class token), d = embed_dim,
        h = num_heads, k = head_dim, f = mlp_dim, C = num_classes.
        """
        model = self.config.model
        d, h, k, f = model.embed_dim, model.num_heads, model.head_dim, model.mlp_dim
        patches, tokens = num_patches(model), num_tokens(model)
        patch_dim = model.patch_size**2 * model.num_channels
        per_token_layer = 2 * (4 * d * h * k + 2 * d * f) + 4 * tokens * h * k
        encoder = tokens * model.num_layers * per_token_layer
        forward = 2 * patches * patch_dim * d + encoder + 2 * d * self.num_classes
        return 3.0 * forward
