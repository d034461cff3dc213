"""Two-tower contrastive image-text model (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023).

A ViT image tower (the pieces of fmjax/models/vit.py, pooled by class token or mean of patches)
and a Transformer text tower (token + learned position embeddings, a pre-LN Stack over real
tokens, pooled at [CLS] or by the mean of real tokens), each followed by a bias-free linear
projection to projection_dim and L2 normalization; a learnable logit scale (log-parametrized) and
bias that the loss (fmjax/tasks/contrastive.py) applies to the cosine similarities.

Config fields (config.model): ContrastiveConfig; the block fields set there (dropout, norms,
dtype, ...) are shared by both towers, `model.image` and `model.text` hold each tower's size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention import ForwardContext
from fmjax.models.attention_backends import AttentionMask
from fmjax.models.dropout import Dropout
from fmjax.models.embeddings import Embedding
from fmjax.models.settings import settings
from fmjax.models.transformer import HIDDEN_AXES, Stack, TransformerConfig, compute_dtype
from fmjax.models.vit import ImageEncoder, ImageEncoderConfig
from fmjax.parallel.sharding import constrain

# CLIP clamps its learned temperature so the logits never exceed 100 x cosine (training
# instability otherwise, Radford et al. 2021 section 2.5).
MAX_LOGIT_SCALE = 100.0
TEXT_POOLINGS = ("cls", "mean")
EMBEDDING_AXES = ("activation_batch", None)


@settings
class TextTowerConfig(TransformerConfig):
    """`model.text`: a Transformer over caption tokens, pooled at [CLS] or by the mean."""

    vocab_size: int
    max_seq_len: int
    pooling: str  # "cls": the [CLS] output | "mean": the mean over real tokens
    pad_id: int = 0  # the tokenizer's [PAD] (fmjax trains its tokenizers with [PAD]=0)

    def check(self, path: str) -> None:
        """TransformerConfig.check, plus a known pooling."""
        super().check(path)
        if self.pooling not in TEXT_POOLINGS:
            raise ConfigError(
                f"{path}.pooling must be one of {TEXT_POOLINGS}, got {self.pooling!r}"
            )


@settings
class ContrastiveConfig:
    """config.model of model.family="contrastive": two towers and the shared embedding space.

    The block fields below are the towers' defaults (a tower section may set its own).
    """

    image: ImageEncoderConfig
    text: TextTowerConfig
    projection_dim: int
    logit_scale_init: float  # log of the initial scale: CLIP log(1/0.07), SigLIP log(10)
    logit_bias_init: float  # SigLIP -10; CLIP ignores the bias
    dropout_rate: float
    attention_dropout_rate: float
    layer_norm_epsilon: float
    norm_position: str
    compute_dtype: str
    attention_backend: str = "auto"
    remat: str = "none"
    scan_layers: bool = False
    mlp_activation: str = "gelu"
    use_bias: bool = True


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

    def __init__(self, config: TextTowerConfig, *, rngs: nnx.Rngs):
        dtype, d = compute_dtype(config), config.embed_dim
        self.pooling = config.pooling
        self.pad_id = config.pad_id  # data/pairs.py checks that the tokenizer agrees
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
        hidden, _ = self.encoder(x, ForwardContext(mask, deterministic, rngs))
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = real.astype(jnp.float32)[:, :, None]
        return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def clamped_logit_scale(log_scale: jax.Array) -> jax.Array:
    """exp(log scale) clamped at MAX_LOGIT_SCALE (CLIP), for training and evaluation alike."""
    return jnp.exp(jnp.minimum(log_scale, math.log(MAX_LOGIT_SCALE)))


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

    config_class = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig, *, rngs: nnx.Rngs):
        image, text = config.image, config.text
        dtype = compute_dtype(config)
        self.image_tower = ImageEncoder(image, rngs=rngs)
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
        return clamped_logit_scale(self.logit.scale[...]), self.logit.bias[...]


Model = ContrastiveModel  # model.family="contrastive" (fmjax/models/__init__.py)
