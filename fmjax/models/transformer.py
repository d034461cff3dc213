"""Transformer building blocks: MLP, Block (post-LN for BERT, pre-LN for the rest), Stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention import NORMAL_INIT, MultiHeadAttention
from fmjax.models.attention_backends import check_attention_backend
from fmjax.models.dropout import Dropout
from fmjax.parallel.sharding import constrain

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The matmul dtype named by config.compute_dtype ("float32" or "bfloat16")."""
    return jnp.dtype(config.compute_dtype)


def dense(
    features_in: int,
    features_out: int,
    axes: tuple[str, str],
    *,
    dtype,
    rngs,
    preferred_element_type=None,
) -> nnx.Linear:
    """A Linear layer with BERT init and logical axis names on kernel and bias
    (preferred_element_type=float32 for outputs that feed a softmax or a loss)."""
    return nnx.Linear(
        features_in,
        features_out,
        dtype=dtype,
        preferred_element_type=preferred_element_type,
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
            backend=check_attention_backend(config, jax.default_backend()),
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
        self.dropout = Dropout(config.dropout_rate)
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


# model.remat -> the jax.checkpoint policy of every block: what its forward pass keeps for the
# backward pass. "none" keeps every activation; "dots_saveable" keeps every matmul output and
# recomputes the rest (GELU, softmax, norms, dropout); "dots_with_no_batch_dims_saveable" keeps
# only the weight matmuls' outputs; "full" keeps only the block's input and recomputes the
# whole block (least memory, about one more forward pass of compute).
REMAT_POLICIES = {
    "none": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # MaxText's usual choice: keeps the projections' and MLP's matmul outputs but not the
    # batched attention matmuls (QKᵀ, PV: [B, H, L, L]-sized), recomputed from Q, K, V.
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def stacked_blocks(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Block:
    """num_layers Blocks as one Block whose params have a leading 'layers' axis (for scan)."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(
        in_axes=(0,),
        out_axes=0,
        axis_size=config.num_layers,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def create(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs)

    return create(rngs)


def scale_residual_projections(stack: Stack, num_layers: int) -> None:
    """GPT-2's scaled residual init: multiplies each block's attention and MLP output kernels
    (drawn from N(0, 0.02)) by 1/sqrt(2 * num_layers), so they are N(0, 0.02/sqrt(2L)) and the
    residual stream's variance does not grow with depth (GPT-2, nanoGPT, HF GPT2Model)."""
    factor = 1.0 / (2.0 * num_layers) ** 0.5
    # with scan_layers one Block holds every layer's kernels on a leading axis
    blocks = [stack.layers] if stack.scan_layers else list(stack.layers)
    for block in blocks:
        for kernel in (block.attention.out.kernel, block.mlp.wo.kernel):
            kernel[...] = kernel[...] * factor


class Stack(nnx.Module):
    """num_layers Blocks; a pre-LN stack ends with a final LayerNorm.

    model.scan_layers=True stores the blocks stacked (created by nnx.vmap: params
    [num_layers, ...] on the logical axis 'layers') and runs them with one lax.scan, so the step
    compiles one block instead of num_layers; False (default) keeps a list of blocks, params
    under layers/0, layers/1, ...
    model.remat applies a REMAT_POLICIES policy to each block either way.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        remat = config.get("remat", "none")
        if remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be one of {list(REMAT_POLICIES)}, got {remat!r}")
        self.remat = remat
        self.scan_layers = bool(config.get("scan_layers", False))
        if self.scan_layers:
            self.layers = stacked_blocks(config, rngs=rngs)
        else:
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
        cache: list[dict] | dict | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, list[dict] | dict]:
        """[B, L, embed] -> [B, L, embed]; with `cache`, also the updated cache. positions
        [B, L] feed rotary attention. The cache is one {"key", "value"} per layer: a list of
        them, or with scan_layers one dict of arrays stacked on a leading layer axis."""

        def apply_block(block: Block, x: jax.Array, rngs, layer_cache):
            out = block(
                x,
                mask,
                deterministic=deterministic,
                rngs=rngs,
                positions=positions,
                cache=layer_cache,
                cache_index=cache_index,
            )
            return (out, None) if layer_cache is None else out

        policy = REMAT_POLICIES[self.remat]
        if self.scan_layers or policy is not None:
            x, new_cache = self._run_pure(apply_block, policy, x, rngs, cache)
        else:
            new_cache = []
            for i, layer in enumerate(self.layers):
                x, layer_cache = apply_block(layer, x, rngs, None if cache is None else cache[i])
                new_cache.append(layer_cache)
        x = x if self.final_norm is None else self.final_norm(x)
        return x if cache is None else (x, new_cache)

    def _run_pure(self, apply_block, policy, x, rngs, cache):
        """Runs the blocks as pure functions of (block state, x, rng state, layer cache), so
        that lax.scan and jax.checkpoint apply (under any outer jit or loop too). The rng state
        is threaded through every block: dropout draws the keys of the plain loop."""
        rngs_graphdef, rngs_state = (None, None) if rngs is None else nnx.split(rngs)

        def pure_block(block_graphdef):
            def call(block_state, x, rngs_state, layer_cache):
                block = nnx.merge(block_graphdef, block_state)
                block_rngs = None if rngs is None else nnx.merge(rngs_graphdef, rngs_state)
                x, layer_cache = apply_block(block, x, block_rngs, layer_cache)
                return x, None if rngs is None else nnx.state(block_rngs), layer_cache

            if policy is None:
                return call
            # Inside a scan the loop already keeps XLA from merging the recomputation away.
            return jax.checkpoint(call, policy=policy, prevent_cse=not self.scan_layers)

        if self.scan_layers:
            call = pure_block(nnx.graphdef(self.layers))

            def scan_body(carry, layer):
                x, rngs_state = carry
                x, rngs_state, layer_cache = call(layer[0], x, rngs_state, layer[1])
                return (x, rngs_state), layer_cache

            (x, rngs_state), new_cache = jax.lax.scan(
                scan_body, (x, rngs_state), (nnx.state(self.layers), cache)
            )
        else:
            new_cache = []
            for i, layer in enumerate(self.layers):
                block_graphdef, block_state = nnx.split(layer)
                layer_cache = None if cache is None else cache[i]
                x, rngs_state, layer_cache = pure_block(block_graphdef)(
                    block_state, x, rngs_state, layer_cache
                )
                new_cache.append(layer_cache)
        if rngs is not None:
            nnx.update(rngs, rngs_state)
        return x, new_cache
