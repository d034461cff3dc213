"""ViT (Dosovitskiy et al. 2021): patch embedding, pre-LN encoder and a classification head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention import ForwardContext
from fmjax.models.dropout import Dropout
from fmjax.models.embeddings import Embedding, PatchEmbedding
from fmjax.models.settings import settings
from fmjax.models.transformer import HIDDEN_AXES, Stack, TransformerConfig, compute_dtype
from fmjax.parallel.sharding import constrain

POOLINGS = ("cls", "gap")
POSITION_EMBEDDINGS = ("learned", "sincos2d")


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C]: patches in row-major order, pixels (y, x, c)."""
    batch, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, rows, patch_size, cols, patch_size, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, rows, cols, p, p, C]
    return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """The inverse of patchify: [B, N, p*p*C] -> [B, H, W, C]."""
    batch, _, patch_dim = patches.shape
    rows, cols = height // patch_size, width // patch_size
    channels = patch_dim // (patch_size * patch_size)
    x = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, rows, p, cols, p, C]
    return x.reshape(batch, height, width, channels)


@settings
class ImageEncoderConfig(TransformerConfig):
    """The fields of a ViT without its head (also the contrastive model's `model.image`)."""

    image_size: int
    patch_size: int
    num_channels: int
    # "cls": a learned class token, as in the paper; "gap": mean of the patch outputs, as in
    # big_vision's "Better plain ViT baselines".
    pooling: str
    # "learned": a trained table over the tokens (the paper, HF); "sincos2d": fixed 2-D sine /
    # cosine features of each patch's row and column, no parameters (big_vision's plain ViT):
    # patches know their place from step 0 instead of once a 0.02-scale table has grown.
    position_embedding: str = "learned"

    def check(self, path: str) -> None:
        """TransformerConfig.check, plus whole patches, a known pooling and pre-LN blocks."""
        super().check(path)
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"{path}.position_embedding must be one of {POSITION_EMBEDDINGS}, "
                f"got {self.position_embedding!r}"
            )
        if self.position_embedding == "sincos2d" and self.embed_dim % 4:
            raise ConfigError(
                f"{path}.position_embedding='sincos2d' needs embed_dim divisible by 4 "
                f"(sin and cos of rows and columns), got {self.embed_dim}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"{path}.image_size={self.image_size} is not a multiple of "
                f"{path}.patch_size={self.patch_size}; change one of them"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"{path}.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.norm_position != "pre":
            raise ConfigError(f"ViT uses pre-LN blocks: set {path}.norm_position='pre'")


@settings
class VitConfig(ImageEncoderConfig):
    """config.model of model.family="vit": an image encoder and num_classes."""

    num_classes: int


def num_patches(config) -> int:
    """Patches per image: (image_size / patch_size)^2."""
    return (config.image_size // config.patch_size) ** 2


def num_tokens(config) -> int:
    """Encoder sequence length: the patches, plus the class token when pooling is "cls"."""
    return num_patches(config) + (1 if config.pooling == "cls" else 0)


def sincos_2d_position_embedding(
    rows: int, cols: int, dim: int, temperature: float = 10_000.0
) -> np.ndarray:
    """float32 [rows * cols, dim]: sin and cos of each patch's column, then of its row, at
    dim / 4 geometric frequencies (big_vision's posemb_sincos_2d), row-major like patchify."""
    y, x = np.mgrid[:rows, :cols]
    omega = np.arange(dim // 4) / max(dim // 4 - 1, 1)
    omega = 1.0 / temperature**omega
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class ImageEncoder(nnx.Module):
    """Image [B, H, W, C] -> pooled features [B, embed_dim]: a ViT without its head."""

    def __init__(self, config: ImageEncoderConfig, *, rngs: nnx.Rngs):
        dtype, d = compute_dtype(config), config.embed_dim
        self.patch_size, self.pooling = config.patch_size, config.pooling
        patch_dim = config.patch_size**2 * config.num_channels
        self.patch_embed = PatchEmbedding(patch_dim, d, dtype=dtype, rngs=rngs)
        self.cls_token = (
            nnx.Param(
                nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",))(
                    rngs.params(), (d,), jnp.float32
                )
            )
            if config.pooling == "cls"
            else None
        )
        self.fixed_positions = None  # (rows, cols, dim) of the sincos2d features
        if config.position_embedding == "learned":
            self.position_embed = Embedding(
                num_tokens(config), d, "position", dtype=dtype, rngs=rngs
            )
        else:
            side = config.image_size // config.patch_size
            self.position_embed, self.fixed_positions = None, (side, side, d)
        self.embed_dropout = Dropout(config.dropout_rate)
        self.encoder = Stack(config, rngs=rngs)  # pre-LN: ends with the final LayerNorm
        self.dtype = dtype

    def encode(
        self, images: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Final hidden states [B, tokens, embed_dim] (float32) of float images [B, H, W, C]."""
        x = self.patch_embed(patchify(images, self.patch_size))
        if self.fixed_positions is not None:  # the patches only: the class token has no place
            x = x + sincos_2d_position_embedding(*self.fixed_positions).astype(x.dtype)
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
            x = jnp.concatenate([cls, x], axis=1)
        if self.position_embed is not None:
            x = x + self.position_embed(jnp.arange(x.shape[1])[None, :])
        x = x.astype(jnp.float32)  # the residual stream is float32 (blocks cast for matmuls)
        x = constrain(self.embed_dropout(x, deterministic=deterministic, rngs=rngs), HIDDEN_AXES)
        hidden, _ = self.encoder(x, ForwardContext(None, deterministic, rngs))
        return hidden

    def __call__(
        self, images: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Pooled float32 features [B, embed_dim]: the class token's output or the patch mean."""
        hidden = self.encode(images, deterministic=deterministic, rngs=rngs)
        return hidden[:, 0] if self.pooling == "cls" else jnp.mean(hidden, axis=1)


class VisionTransformer(ImageEncoder):
    """Image [B, H, W, C] -> class logits [B, num_classes]."""

    config_class = VitConfig

    def __init__(self, config: VitConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        # Zero-initialized head (ViT / big_vision): every class starts at the same logit.
        self.head = nnx.Linear(
            config.embed_dim,
            config.num_classes,
            dtype=self.dtype,
            preferred_element_type=jnp.float32,  # logits feed the loss: float32 accumulation
            kernel_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed", "classes")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("classes",)),
            rngs=rngs,
        )

    def __call__(
        self, images: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Class logits float32 [B, num_classes]."""
        pooled = super().__call__(images, deterministic=deterministic, rngs=rngs)
        logits = self.head(pooled.astype(self.dtype)).astype(jnp.float32)
        return constrain(logits, ("activation_batch", None))


Model = VisionTransformer  # model.family="vit" (fmjax/models/__init__.py)
