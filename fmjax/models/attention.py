"""Multi-head attention: softmax(Q Kᵀ / √d_k + mask) · V with per-head projections.

Optional extras for decoders: rotary positions (RoPE) on queries and keys, and a functional
KV cache ({"key", "value"} arrays [B, S, H, D]) that decoding writes one step at a time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.models.attention_backends import (
    AttentionMask,
    as_attention_mask,
    cudnn_attention,
    splash_attention,
)
from fmjax.models.dropout import dropout
from fmjax.models.embeddings import apply_rotary
from fmjax.parallel.sharding import constrain

NORMAL_INIT = nnx.initializers.normal(stddev=0.02)
# config.model.kernel_init -> the initializer of every attention and MLP kernel. "normal":
# N(0, 0.02), as BERT, GPT-2 and HF's ViT. "xavier_uniform": as the original ViT and big_vision;
# scaled by fan-in and fan-out, so at width 128 it starts 3-4x larger than 0.02, and a tiny ViT
# learns faster from it (README "Results", ViT).
KERNEL_INITS = {"normal": NORMAL_INIT, "xavier_uniform": nnx.initializers.xavier_uniform()}
MASKED_OUT = -1e30  # finite, so a fully masked row gives a uniform softmax rather than NaN


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    """What every attention layer of one forward pass sees besides its input and its KV cache.

    mask: an AttentionMask (what fused kernels understand), a boolean array broadcasting to
    [B, 1, Lq, Lk], or None. deterministic: no dropout (eval); otherwise `rngs` draws the
    dropout keys. positions [B, L]: token positions for rotary embeddings (rotary modules only).
    cache_index: the slot at which a call with a KV cache writes its keys and values.
    """

    mask: AttentionMask | jax.Array | None
    deterministic: bool
    rngs: nnx.Rngs | None = None
    positions: jax.Array | None = None
    cache_index: jax.Array | int | None = None


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] (1 = real token) -> [B, 1, 1, L] boolean, True where a key may be attended."""
    return attention_mask.astype(bool)[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """[1, 1, L, L] boolean lower triangle: query i attends keys 0..i."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def segment_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
    """[B, 1, Lq, Lk]: True where query and key belong to the same packed document."""
    return query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :]


def attention_probabilities(query: jax.Array, key: jax.Array, mask: jax.Array | None) -> jax.Array:
    """softmax(Q Kᵀ / √d_k) in float32, [B, H, Lq, Lk], of [B, L, H, D] queries and keys."""
    # The scores feed a softmax: accumulated and returned in float32 even from bfloat16 inputs.
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(query.shape[-1]))
    if mask is not None:
        scores = jnp.where(mask, scores, MASKED_OUT)
    return jax.nn.softmax(scores, axis=-1)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask | jax.Array | None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    backend: str = "xla",
) -> jax.Array:
    """Attention over [B, L, H, D] inputs; `mask` is an AttentionMask or a boolean array that
    broadcasts to [B, H, Lq, Lk] (True = attend). backend: "xla" (this einsum path, the
    reference), "cudnn" or "splash" (fused kernels; see attention_backends.py)."""
    mask = as_attention_mask(mask)
    use_dropout = dropout_rate > 0.0 and not deterministic
    if backend != "xla" and use_dropout:
        # check_attention_backend refuses this combination at start; reaching it is a bug.
        raise ValueError(f"the {backend} attention kernel cannot apply attention dropout")
    if backend == "cudnn":
        return cudnn_attention(query, key, value, mask)
    if backend == "splash":
        return splash_attention(query, key, value, mask)
    if backend != "xla":
        raise ValueError(f"unknown attention backend {backend!r}")
    probs = attention_probabilities(query, key, mask.dense(query.shape[1], key.shape[1]))
    if use_dropout:
        probs = dropout(probs, dropout_rate, dropout_rng)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)


class MultiHeadAttention(nnx.Module):
    """Self-attention with per-head query/key/value projections and an output projection."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        dropout_rate: float,
        dtype: jnp.dtype,
        backend: str,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        rotary: bool = False,
        kernel_init=NORMAL_INIT,
    ):
        def projection(features_in, features_out, axes_in, axes_out):
            return nnx.LinearGeneral(
                features_in,
                features_out,
                axis=tuple(range(-len(features_in), 0)),
                use_bias=use_bias,
                dtype=dtype,
                kernel_init=nnx.with_partitioning(kernel_init, (*axes_in, *axes_out)),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes_out),
                rngs=rngs,
            )

        heads = (num_heads, head_dim)
        self.query = projection((embed_dim,), heads, ("embed",), ("heads", "kv"))
        self.key = projection((embed_dim,), heads, ("embed",), ("heads", "kv"))
        self.value = projection((embed_dim,), heads, ("embed",), ("heads", "kv"))
        self.out = projection(heads, (embed_dim,), ("heads", "kv"), ("embed",))
        self.dropout_rate = dropout_rate
        self.backend = backend
        self.rotary = rotary
        # fmjax.tools.attention_maps turns this on to `sow` the probabilities; off in training.
        self.sow_attention_probabilities = False

    def __call__(
        self, x: jax.Array, context: ForwardContext, cache: dict | None = None
    ) -> jax.Array | tuple[jax.Array, dict]:
        """[B, L, embed] -> [B, L, embed]; with `cache`, also returns the updated cache.

        cache: {"key", "value"} [B, S, H, D]; this call's keys/values are written at slots
        context.cache_index .. cache_index + L and attention runs over all S slots (the mask is
        then [B, 1, L, S] and decides which slots are visible).
        """
        head_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        query, key, value = (constrain(y, head_axes) for y in self.project_qkv(x))
        if self.rotary:
            if context.positions is None:
                raise ValueError("a rotary attention module needs token positions")
            query = apply_rotary(query, context.positions)
            key = apply_rotary(key, context.positions)
        new_cache = None
        if cache is not None:
            start = (0, context.cache_index, 0, 0)
            key = jax.lax.dynamic_update_slice(cache["key"], key.astype(cache["key"].dtype), start)
            value = jax.lax.dynamic_update_slice(
                cache["value"], value.astype(cache["value"].dtype), start
            )
            new_cache = {"key": key, "value": value}
        dropout_rng = None
        if not context.deterministic and self.dropout_rate > 0.0:
            dropout_rng = context.rngs.dropout()
        mask = as_attention_mask(context.mask)
        attended = dot_product_attention(
            query,
            key,
            value,
            mask,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=context.deterministic,
            # Decoding one token against a KV cache is no kernel's shape: the einsum reference.
            backend=self.backend if cache is None else "xla",
        )
        if self.sow_attention_probabilities:
            dense = mask.dense(query.shape[1], key.shape[1])
            probabilities = attention_probabilities(query, key, dense)
            self.sow(nnx.Intermediate, "attention_probabilities", probabilities)
        out = self.out(constrain(attended, head_axes))
        return out if new_cache is None else (out, new_cache)

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values [B, L, H, D] of x [B, L, embed] in one matmul.

        The three kernels stay separate parameters (their paths and shardings are what
        checkpoints, HF weight exchange and the sharding rules name); stacking them on a new
        axis at compute time makes one [embed] x [3, H, D] matmul, and keeps heads where the
        sharding put them.
        """
        projections = (self.query, self.key, self.value)
        dtype = self.query.dtype
        kernel = jnp.stack([p.kernel[...] for p in projections], axis=1).astype(dtype)
        qkv = jnp.einsum("ble,ekhd->kblhd", x.astype(dtype), kernel)
        if self.query.use_bias:
            bias = jnp.stack([p.bias[...] for p in projections]).astype(dtype)
            qkv = qkv + bias[:, None, None]
        return qkv[0], qkv[1], qkv[2]
