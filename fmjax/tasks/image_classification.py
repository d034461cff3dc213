"""Image classification (ViT): batch layout, cross-entropy, FLOPs; eval over the whole held-out
split with top-1 accuracy and macro precision / recall / F1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fmjax.data.task_data import TaskData
from fmjax.models.vit import num_patches, num_tokens
from fmjax.tasks.base import Metrics, Task, arrays
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops
from fmjax.tasks.losses import cross_entropy, weighted_cross_entropy
from fmjax.tasks.text_classification import classification_metrics, confusion_matrix

if TYPE_CHECKING:
    from fmjax.train.step import TrainProgram


class ImageClassification(Task):
    """Predict one of model.num_classes labels per image; weights 0 mark padding rows."""

    name = "image_classification"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = config.model
        self.image_shape = (int(model.image_size), int(model.image_size), int(model.num_channels))
        self.num_classes = int(model.num_classes)
        self.label_smoothing = float(config.task.get("label_smoothing", 0.0))

    def build_data(self) -> TaskData:
        """Augmented train batches and the full test split for eval (see fmjax.data.images)."""
        from fmjax.data.images import build_image_data

        return build_image_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` images."""
        return {
            **arrays((batch_size, *self.image_shape), jnp.float32, "images"),
            **arrays((batch_size,), jnp.int32, "labels"),
            **arrays((batch_size,), jnp.float32, "weights"),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean cross-entropy over weighted images, and (sum, count) loss and top-1 accuracy."""
        logits = model(batch["images"], deterministic=deterministic, rngs=rngs)
        return weighted_cross_entropy(
            logits, batch["labels"], batch["weights"], self.label_smoothing
        )

    def logits_and_labels(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(logits [B, C], labels [B]) of a held-out batch, for TrainProgram.predict."""
        return model(batch["images"], deterministic=True), batch["labels"]

    def evaluate(self, program: TrainProgram, params: Any, data: TaskData) -> dict[str, Any]:
        """Loss, top-1 accuracy and macro precision / recall / F1 over the whole held-out split."""
        logits, labels = program.predict(params, data.eval_batches, self.logits_and_labels)
        matrix = confusion_matrix(labels, np.argmax(logits, axis=-1), self.num_classes)
        losses = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), self.label_smoothing)
        return {
            "loss": float(np.mean(losses)),
            **classification_metrics(matrix),
            "num_examples": float(len(labels)),
        }

    def tokens_per_example(self) -> int:
        """Patches per image (what tokens_per_s counts for images)."""
        return num_patches(self.config.model)

    def train_flops_per_example(self) -> float:
        """The encoder's FLOPs (fmjax.tasks.flops) over T tokens (N patches, + 1 with a class
        token), plus the patch embedding 2 * N * P * d (P = patch_size^2 * channels) and the
        head 2 * d * C."""
        model = self.config.model
        patch_dim = model.patch_size**2 * model.num_channels
        forward = (
            2 * num_patches(model) * patch_dim * model.embed_dim
            + transformer_forward_flops(model, num_tokens(model))
            + 2 * model.embed_dim * self.num_classes
        )
        return TRAIN_FLOPS_PER_FORWARD * forward
