"""Contrastive image-text pretraining: CLIP softmax or SigLIP sigmoid loss, retrieval eval, FLOPs.

The loss uses the GLOBAL batch as negatives. The train step is one jit over the whole mesh, so
inside it the embeddings are global [B, D] arrays whose rows are split over the data-parallel
mesh axes; the text embeddings are constrained to be replicated (GSPMD inserts the all-gather of
B x D floats, the "gather the other tower" scheme of CLIP), and the logits [B, B] keep their rows
on the image's devices with every column present. Column reductions (CLIP's text->image softmax)
become cross-device reductions. The loss is therefore the same function of the same global batch
on 1 or 8 devices (tests/test_contrastive.py checks it), at O(B^2) memory spread over the devices.

Eval embeds the whole held-out split (not batch by batch) and reports image->text and
text->image recall@1/@5 among all held-out pairs, the loss over the whole split, and zero-shot
accuracy: each held-out image with a class gets the class whose prompt ("an emoji of a {class}")
embeds closest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fmjax.data.task_data import TaskData, array_batches
from fmjax.errors import ConfigError
from fmjax.models.contrastive import clamped_logit_scale
from fmjax.models.vit import num_patches, num_tokens
from fmjax.parallel.sharding import constrain
from fmjax.tasks.base import Metrics, Task
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops

if TYPE_CHECKING:
    from fmjax.train.step import TrainProgram

LOSSES = ("clip", "siglip")
RECALL_AT = (1, 5)
LOGITS_AXES = ("activation_batch", None)  # rows (images) split like the batch, all columns


def similarity_logits(
    image_embeddings: jax.Array, text_embeddings: jax.Array, scale: jax.Array, bias: jax.Array
) -> jax.Array:
    """[B, B] float32: scale * cosine(image i, text j) + bias (embeddings are unit-norm)."""
    cosine = jnp.einsum(
        "id,jd->ij", image_embeddings.astype(jnp.float32), text_embeddings.astype(jnp.float32)
    )
    return scale * cosine + bias


def clip_loss(logits: jax.Array) -> jax.Array:
    """Per-pair CLIP loss [B]: the mean of the image->text and text->image cross-entropies.

    Pair i's target is the diagonal entry: row i over all texts, column i over all images.
    """
    logits = logits.astype(jnp.float32)
    diagonal = jnp.diagonal(logits)
    image_to_text = jax.nn.logsumexp(logits, axis=1) - diagonal
    text_to_image = jax.nn.logsumexp(logits, axis=0) - diagonal
    return 0.5 * (image_to_text + text_to_image)


def siglip_loss(logits: jax.Array) -> jax.Array:
    """Per-image SigLIP loss [B]: -sum_j log sigmoid(z_ij * logits_ij), z = +1 on the diagonal,
    -1 elsewhere; its mean over images is the paper's -1/|B| sum_i sum_j."""
    logits = logits.astype(jnp.float32)
    signs = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits), axis=1)


def recall_at_k(similarities: np.ndarray, k: int) -> float:
    """Fraction of rows whose own column (the diagonal) is among its k highest; ties count
    against it (the rank is the number of columns scoring at least as high, others included)."""
    similarities = np.asarray(similarities, np.float64)
    diagonal = np.diagonal(similarities)[:, None]
    rank = np.sum(similarities >= diagonal, axis=1) - 1  # columns tied or above, besides itself
    return float(np.mean(rank < k))


class ContrastiveImageText(Task):
    """Match each image with its caption among all pairs of the global batch."""

    name = "contrastive"
    # The loss takes its negatives from the whole batch, which microbatches would shrink.
    supports_grad_accum = False

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.loss = str(config.task.get("loss", "clip"))
        if self.loss not in LOSSES:
            raise ConfigError(f"task.loss must be one of {LOSSES}, got {self.loss!r}")
        image = config.model.image
        self.image_shape = (int(image.image_size), int(image.image_size), int(image.num_channels))
        self.seq_len = int(config.data.seq_len)

    def build_data(self) -> TaskData:
        """Emoji pairs, the held-out split and zero-shot prompts (see fmjax.data.pairs)."""
        from fmjax.data.pairs import build_pair_data

        return build_pair_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a training batch of `batch_size` pairs."""
        return {
            "images": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32),
            "input_ids": jax.ShapeDtypeStruct((batch_size, self.seq_len), jnp.int32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        }

    def per_pair_loss(self, logits: jax.Array) -> jax.Array:
        """The configured loss per pair [B] from the global logits [B, B]."""
        return clip_loss(logits) if self.loss == "clip" else siglip_loss(logits)

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean loss over the global batch, in-batch retrieval accuracy, scale and bias."""
        image_embeddings, text_embeddings = model(
            batch["images"], batch["input_ids"], deterministic=deterministic, rngs=rngs
        )
        # Every device's images meet every text of the global batch (see the module docstring).
        text_embeddings = constrain(text_embeddings, (None, None))
        scale, bias = model.logit_scale_and_bias()
        if self.loss == "clip":
            bias = jnp.zeros_like(bias)  # CLIP has no bias; its parameter stays at its init
        logits = constrain(
            similarity_logits(image_embeddings, text_embeddings, scale, bias), LOGITS_AXES
        )
        losses = self.per_pair_loss(logits)
        count = jnp.float32(losses.shape[0])
        targets = jnp.arange(logits.shape[0])
        one = jnp.float32(1.0)
        metrics = {
            "loss": (jnp.sum(losses), count),
            "image_to_text_accuracy": (jnp.sum(jnp.argmax(logits, axis=1) == targets), count),
            "text_to_image_accuracy": (jnp.sum(jnp.argmax(logits, axis=0) == targets), count),
            "logit_scale": (scale, one),
        }
        if self.loss == "siglip":
            metrics["logit_bias"] = (bias, one)
        return jnp.mean(losses), metrics

    # --- evaluation over the whole held-out split -------------------------------------------

    def embed_pairs(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, ...]:
        """(image embeddings, text embeddings, labels) of a held-out batch."""
        images = model.encode_images(batch["images"], deterministic=True)
        return images, model.encode_texts(batch["input_ids"], deterministic=True), batch["labels"]

    def embed_texts(self, model: nnx.Module, batch: dict) -> jax.Array:
        """Text embeddings of a batch of token ids (the zero-shot prompts)."""
        return model.encode_texts(batch["input_ids"], deterministic=True)

    def evaluate(self, program: TrainProgram, params: Any, data: TaskData) -> dict[str, float]:
        """Retrieval recall@k both ways, loss over all held-out pairs, zero-shot accuracy."""
        image_embeddings, text_embeddings, labels = program.predict(
            params, data.eval_batches, self.embed_pairs
        )
        prompts = array_batches(
            {"input_ids": data.class_prompt_ids}, int(self.config.train.batch_size)
        )
        prompt_embeddings = program.predict(params, prompts, self.embed_texts)
        similarities = image_embeddings @ text_embeddings.T  # [N images, N texts]
        logit = params["logit"]
        scale = float(clamped_logit_scale(jax.device_get(logit["scale"])))
        bias = float(jax.device_get(logit["bias"])) if self.loss == "siglip" else 0.0
        losses = self.per_pair_loss(jnp.asarray(scale * similarities + bias))
        values = {"loss": float(jnp.mean(losses)), "num_pairs": float(len(similarities))}
        for k in RECALL_AT:
            values[f"image_to_text_recall_at_{k}"] = recall_at_k(similarities, k)
            values[f"text_to_image_recall_at_{k}"] = recall_at_k(similarities.T, k)
        labeled = labels < len(data.class_names)
        if labeled.any():
            predicted = np.argmax(image_embeddings[labeled] @ prompt_embeddings.T, axis=1)
            values["zero_shot_accuracy"] = float(np.mean(predicted == labels[labeled]))
            values["zero_shot_images"] = float(labeled.sum())
        return values

    def tokens_per_example(self) -> int:
        """Image patches + caption tokens (padding included) per pair."""
        return num_patches(self.config.model.image) + self.seq_len

    def train_flops_per_example(self) -> float:
        """Both towers' FLOPs (fmjax.tasks.flops: the image tower over T_i tokens = N patches,
        + 1 with a class token; the text tower over L tokens), plus
          image patch embedding:  2 * N * P * d_i                     P = patch_size^2 * channels
          projections:            2 * d_i * D + 2 * d_t * D
          similarity logits:      2 * B * D                           the [B, B] matmul / B pairs
        with D = projection_dim and B = train.batch_size (the global batch: every pair is
        compared with all B captions, whatever the mesh).
        """
        model = self.config.model
        image, text = model.image, model.text
        patch_dim = image.patch_size**2 * image.num_channels
        projection_dim, batch_size = model.projection_dim, int(self.config.train.batch_size)
        forward = (
            2 * num_patches(image) * patch_dim * image.embed_dim
            + transformer_forward_flops(image, num_tokens(image))
            + transformer_forward_flops(text, self.seq_len)
            + 2 * (image.embed_dim + text.embed_dim) * projection_dim
            + 2 * batch_size * projection_dim
        )
        return TRAIN_FLOPS_PER_FORWARD * forward
