"""Token and position embeddings (learned, sinusoidal, rotary (RoPE)) and patch embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NORMAL_INIT = nnx.initializers.normal(stddev=0.02)


class Embedding(nnx.Module):
    """A lookup table [num, embed_dim] with logical axes; `attend` is the tied output layer."""

    def __init__(self, num: int, embed_dim: int, axis_name: str, *, dtype, rngs: nnx.Rngs):
        init = nnx.with_partitioning(NORMAL_INIT, (axis_name, "embed"))
        self.embedding = nnx.Param(init(rngs.params(), (num, embed_dim), jnp.float32))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x @ tableᵀ: float32 scores against every row (the tied output projection).

        The scores feed a softmax / loss, so they accumulate and come out in float32 whatever
        the compute dtype of x and the table.
        """
        table = self.embedding[...].astype(self.dtype)
        return jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32)


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10_000.0) -> jax.Array:
    """[length, dim] fixed sine/cosine position encodings (Vaswani et al. 2017)."""
    positions = jnp.arange(length, dtype=jnp.float32)[:, None]
    frequencies = max_timescale ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions * frequencies[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :dim]


def apply_rotary(x: jax.Array, positions: jax.Array, max_timescale: float = 10_000.0) -> jax.Array:
    """Rotary position embedding of [B, L, H, D] queries/keys at integer positions [B, L]."""
    half = x.shape[-1] // 2
    frequencies = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * frequencies  # [B, L, D/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


class PatchEmbedding(nnx.Module):
    """Linear projection of flattened image patches [B, N, patch_dim] -> [B, N, embed_dim].

    The same map as a stride-p convolution with a p x p kernel, written as a matmul over the
    output of `fmjax.models.vit.patchify`; kernel on logical axes ('patch', 'embed').
    """

    def __init__(self, patch_dim: int, embed_dim: int, *, dtype, rngs: nnx.Rngs):
        # LeCun-normal fan-in init, as the ViT reference initializes its patch convolution.
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            nnx.with_partitioning(init, ("patch", "embed"))(
                rngs.params(), (patch_dim, embed_dim), jnp.float32
            )
        )
        self.bias = nnx.Param(
            nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",))(
                rngs.params(), (embed_dim,), jnp.float32
            )
        )
        self.dtype = dtype

    def __call__(self, patches: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...].astype(self.dtype), self.bias[...].astype(self.dtype)
        return jnp.einsum("bnp,pd->bnd", patches.astype(self.dtype), kernel) + bias
