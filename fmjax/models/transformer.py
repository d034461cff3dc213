"""Transformer building blocks: MLP, Block (post-LN for BERT, pre-LN for the rest), Stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.models.attention import NORMAL_INIT, MultiHeadAttention
from fmjax.parallel.sharding import constrain

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The matmul dtype named by config.compute_dtype ("float32" or "bfloat16")."""
    return jnp.dtype(config.compute_dtype)


def dense(features_in: int, features_out: int, axes: tuple[str, str], *, dtype, rngs) -> nnx.Linear:
    """A Linear layer with BERT init and logical axis names on kernel and bias."""
    return nnx.Linear(
        features_in,
        features_out,
        dtype=dtype,
        kernel_init=nnx.with_partitioning(NORMAL_INIT, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]),
        rngs=rngs,
    )


def layer_norm(features: int, epsilon: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm computed in float32, scale and bias on the 'norm' logical axis."""
    return nnx.LayerNorm(
        features,
        epsilon=epsilon,
        dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


# model.mlp_activation -> jax.nn.gelu(approximate=...): exact GELU (BERT) or the tanh
# approximation (GPT-2's "gelu_new").
MLP_ACTIVATIONS = {"gelu": False, "gelu_tanh": True}


class Mlp(nnx.Module):
    """dense -> GELU (exact, as in BERT, or the tanh approximation of GPT-2) -> dense."""

    def __init__(
        self, embed_dim: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs, activation: str = "gelu"
    ):
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"model.mlp_activation must be one of {sorted(MLP_ACTIVATIONS)}, got {activation!r}"
            )
        self.wi = dense(embed_dim, mlp_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.wo = dense(mlp_dim, embed_dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.approximate_gelu = MLP_ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = jax.nn.gelu(self.wi(x), approximate=self.approximate_gelu)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return self.wo(hidden)


class Block(nnx.Module):
    """Attention + MLP with residuals; norm_position "post" (BERT) or "pre" (GPT, ViT)."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        self.attention = MultiHeadAttention(
            config.embed_dim,
            config.num_heads,
            config.head_dim,
            dropout_rate=config.attention_dropout_rate,
            dtype=dtype,
            backend=config.attention_backend,
            rngs=rngs,
            use_bias=config.get("use_bias", True),
            rotary=config.get("position_embedding", "learned") == "rotary",
        )
        self.mlp = Mlp(
            config.embed_dim,
            config.mlp_dim,
            dtype=dtype,
            rngs=rngs,
            activation=config.get("mlp_activation", "gelu"),
        )
        self.attention_norm = layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
        self.mlp_norm = layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate)
        self.pre_norm = config.norm_position == "pre"
        self.dtype = dtype

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
        positions: jax.Array | None = None,
        cache: dict | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, dict]:
        """[B, L, embed] -> [B, L, embed]; with a KV `cache`, also the updated cache."""
        new_cache = None

        def drop(y):
            return self.dropout(y, deterministic=deterministic, rngs=rngs)

        def attention(y):
            nonlocal new_cache
            out = self.attention(
                y.astype(self.dtype),
                mask,
                deterministic=deterministic,
                rngs=rngs,
                positions=positions,
                cache=cache,
                cache_index=cache_index,
            )
            if cache is not None:
                out, new_cache = out
            return out

        def mlp(y):
            return self.mlp(y.astype(self.dtype))

        if self.pre_norm:
            x = x + drop(attention(self.attention_norm(x)))
            x = x + drop(mlp(self.mlp_norm(x)))
        else:
            x = self.attention_norm(x + drop(attention(x)))
            x = self.mlp_norm(x + drop(mlp(x)))
        x = constrain(x, HIDDEN_AXES)
        return x if cache is None else (x, new_cache)


class Stack(nnx.Module):
    """num_layers Blocks; a pre-LN stack ends with a final LayerNorm."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = (
            layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
            if config.norm_position == "pre"
            else None
        )

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
        positions: jax.Array | None = None,
        cache: list[dict] | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, list[dict]]:
        """[B, L, embed] -> [B, L, embed]; with `cache` (one KV cache per layer), also the
        updated caches. positions [B, L] feed rotary attention."""
        new_caches = []
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = layer(x, mask, deterministic=deterministic, rngs=rngs, positions=positions)
            else:
                x, layer_cache = layer(
                    x,
                    mask,
                    deterministic=deterministic,
                    rngs=rngs,
                    positions=positions,
                    cache=cache[i],
                    cache_index=cache_index,
                )
                new_caches.append(layer_cache)
        x = x if self.final_norm is None else self.final_norm(x)
        return x if cache is None else (x, new_caches)
