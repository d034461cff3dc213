"""Two-tower contrastive image-text model (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023).

A ViT image tower (the pieces of fmjax/models/vit.py, pooled by class token or mean of patches)
and a Transformer text tower (token + learned position embeddings, a pre-LN Stack over real
tokens, pooled at [CLS] or by the mean of real tokens), each followed by a bias-free linear
projection to projection_dim and L2 normalization; a learnable logit scale (log-parametrized) and
bias that the loss (fmjax/tasks/contrastive.py) applies to the cosine similarities.

Config fields (config.model): projection_dim, logit_scale_init (log of the initial scale: CLIP
log(1/0.07), SigLIP log(10)), logit_bias_init (SigLIP -10; CLIP ignores the bias), and the fields
both towers share: dropout_rate, attention_dropout_rate, layer_norm_epsilon, norm_position
("pre"), compute_dtype, attention_backend. `model.image`: image_size, patch_size, num_channels,
pooling ("cls" | "gap"), embed_dim, num_layers, num_heads, head_dim, mlp_dim. `model.text`:
vocab_size, max_seq_len, pooling ("cls" | "mean"), pad_id (the tokenizer's [PAD], default 0),
embed_dim, num_layers, num_heads, head_dim, mlp_dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention_backends import AttentionMask
from fmjax.models.dropout import Dropout
from fmjax.models.embeddings import Embedding
from fmjax.models.transformer import HIDDEN_AXES, Stack, compute_dtype
from fmjax.models.vit import ImageEncoder
from fmjax.parallel.sharding import constrain

# CLIP clamps its learned temperature so the logits never exceed 100 x cosine (training
# instability otherwise, Radford et al. 2021 section 2.5).
MAX_LOGIT_SCALE = 100.0
SHARED_FIELDS = (
    "dropout_rate",
    "attention_dropout_rate",
    "layer_norm_epsilon",
    "norm_position",
    "compute_dtype",
    "attention_backend",
)
# Block/Stack options a model config may set (remat, scan over layers, ...): shared when present.
OPTIONAL_SHARED_FIELDS = ("remat", "scan_layers", "mlp_activation", "use_bias")
TEXT_POOLINGS = ("cls", "mean")
EMBEDDING_AXES = ("activation_batch", None)


def tower_config(config: ml_collections.ConfigDict, tower: str) -> ml_collections.ConfigDict:
    """config.model.<tower> plus the fields both towers share (dtype, norms, dropout)."""
    merged = ml_collections.ConfigDict(config[tower].to_dict())
    for field in SHARED_FIELDS:
        merged[field] = config[field]
    for field in OPTIONAL_SHARED_FIELDS:
        if field in config:
            merged[field] = config[field]
    if merged.norm_position != "pre":
        raise ConfigError("the contrastive towers are pre-LN: set model.norm_position='pre'")
    return merged


def l2_normalize(x: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """x / ||x|| along the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + epsilon)


def projection(features_in: int, features_out: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Bias-free projection to the shared space, init N(0, features_in^-1/2) as in CLIP."""
    init = nnx.initializers.normal(stddev=features_in**-0.5)
    return nnx.Linear(
        features_in,
        features_out,
        use_bias=False,
        dtype=dtype,
        kernel_init=nnx.with_partitioning(init, ("embed", "projection")),
        rngs=rngs,
    )


class TextTower(nnx.Module):
    """Token ids [B, L] ([CLS] first, [PAD] = 0 after the text) -> pooled [B, embed_dim]."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if config.pooling not in TEXT_POOLINGS:
            raise ConfigError(
                f"model.text.pooling must be one of {TEXT_POOLINGS}, got {config.pooling!r}"
            )
        dtype, d = compute_dtype(config), config.embed_dim
        self.pooling = config.pooling
        # The tokenizer's [PAD] id (fmjax trains its tokenizers with [PAD]=0; data/pairs.py
        # checks that the two agree).
        self.pad_id = int(config.get("pad_id", 0))
        self.token_embed = Embedding(config.vocab_size, d, "vocab", dtype=dtype, rngs=rngs)
        self.position_embed = Embedding(config.max_seq_len, d, "position", dtype=dtype, rngs=rngs)
        self.embed_dropout = Dropout(config.dropout_rate)
        self.encoder = Stack(config, rngs=rngs)

    def __call__(
        self, input_ids: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        real = input_ids != self.pad_id
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = self.token_embed(input_ids) + self.position_embed(positions)
        x = constrain(x.astype(jnp.float32), HIDDEN_AXES)
        x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
        mask = AttentionMask(key_padding=real)  # captions are padded on the right
        hidden = self.encoder(x, mask, deterministic=deterministic, rngs=rngs)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = real.astype(jnp.float32)[:, :, None]
        return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class LogitScale(nnx.Module):
    """Learnable log logit scale and logit bias (named scale/bias: never weight-decayed)."""

    def __init__(self, log_scale_init: float, bias_init: float, *, rngs: nnx.Rngs):
        def scalar(value: float) -> nnx.Param:
            init = nnx.with_partitioning(nnx.initializers.constant(value), ())
            return nnx.Param(init(rngs.params(), (), jnp.float32))

        self.scale = scalar(log_scale_init)  # the logits are exp(scale) * cosine + bias
        self.bias = scalar(bias_init)


class ContrastiveModel(nnx.Module):
    """(images [B, H, W, C], token ids [B, L]) -> L2-normalized embeddings, each [B, D]."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        image, text = tower_config(config, "image"), tower_config(config, "text")
        dtype = compute_dtype(config)
        self.image_tower = ImageEncoder(image, rngs=rngs, config_path="model.image")
        self.text_tower = TextTower(text, rngs=rngs)
        self.image_projection = projection(
            image.embed_dim, config.projection_dim, dtype=dtype, rngs=rngs
        )
        self.text_projection = projection(
            text.embed_dim, config.projection_dim, dtype=dtype, rngs=rngs
        )
        self.logit = LogitScale(config.logit_scale_init, config.logit_bias_init, rngs=rngs)
        self.dtype = dtype

    def encode_images(
        self, images: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Unit-norm float32 image embeddings [B, projection_dim]."""
        pooled = self.image_tower(images, deterministic=deterministic, rngs=rngs)
        embeddings = l2_normalize(self.image_projection(pooled.astype(self.dtype)))
        return constrain(embeddings, EMBEDDING_AXES)

    def encode_texts(
        self, input_ids: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Unit-norm float32 text embeddings [B, projection_dim]."""
        pooled = self.text_tower(input_ids, deterministic=deterministic, rngs=rngs)
        embeddings = l2_normalize(self.text_projection(pooled.astype(self.dtype)))
        return constrain(embeddings, EMBEDDING_AXES)

    def __call__(
        self,
        images: jax.Array,
        input_ids: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(image embeddings, text embeddings), unit-norm float32 [B, projection_dim] each."""
        return (
            self.encode_images(images, deterministic=deterministic, rngs=rngs),
            self.encode_texts(input_ids, deterministic=deterministic, rngs=rngs),
        )

    def logit_scale_and_bias(self) -> tuple[jax.Array, jax.Array]:
        """(exp(log scale) clamped at MAX_LOGIT_SCALE, bias), float32 scalars."""
        log_scale = jnp.minimum(self.logit.scale[...], math.log(MAX_LOGIT_SCALE))
        return jnp.exp(log_scale), self.logit.bias[...]
