"""SimCLR (Chen et al. 2020) image model: a ViT encoder and an MLP projection head.

The encoder's parameters have the paths of fmjax/models/vit.py's VisionTransformer
(patch_embed, position_embed, encoder, cls_token), so a ViT classifier starts from a pretrained
run with train.init_from (its `head` is new). The projection head, as SimCLR's, is
dense -> ReLU -> dense to projection_dim; the contrastive loss (fmjax/tasks/simclr.py) works on
its L2-normalized output and the head is dropped after pretraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.models.contrastive import EMBEDDING_AXES, l2_normalize
from fmjax.models.settings import settings
from fmjax.models.transformer import dense
from fmjax.models.vit import ImageEncoder, ImageEncoderConfig
from fmjax.parallel.sharding import constrain


@settings
class SimclrConfig(ImageEncoderConfig):
    """config.model of model.family="simclr": an image encoder and its projection head."""

    projection_hidden_dim: int
    projection_dim: int


class SimclrModel(ImageEncoder):
    """Images [B, H, W, C] -> unit-norm projections [B, projection_dim] (float32)."""

    config_class = SimclrConfig

    def __init__(self, config: SimclrConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        hidden, out = config.projection_hidden_dim, config.projection_dim
        axes_in, axes_out = ("embed", "mlp"), ("mlp", "projection")
        self.projection_hidden = dense(
            config.embed_dim, hidden, axes_in, dtype=self.dtype, rngs=rngs
        )
        self.projection_out = dense(hidden, out, axes_out, dtype=self.dtype, rngs=rngs)

    def __call__(
        self, images: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Unit-norm float32 projections [B, projection_dim] of float images [B, H, W, C]."""
        pooled = super().__call__(images, deterministic=deterministic, rngs=rngs)
        hidden = jax.nn.relu(self.projection_hidden(pooled.astype(self.dtype)))
        projections = self.projection_out(hidden).astype(jnp.float32)
        return constrain(l2_normalize(projections), EMBEDDING_AXES)


Model = SimclrModel  # model.family="simclr" (fmjax/models/__init__.py)
