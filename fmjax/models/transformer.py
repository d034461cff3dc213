"""Transformer building blocks: their settings, MLP, Block (post-LN for BERT, pre-LN for the
rest) and Stack (a loop or an nnx.scan over the blocks, each optionally rematerialized)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention import KERNEL_INITS, NORMAL_INIT, ForwardContext, MultiHeadAttention
from fmjax.models.attention_backends import check_attention_backend
from fmjax.models.dropout import Dropout
from fmjax.models.settings import settings
from fmjax.parallel.sharding import constrain

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")

# model.mlp_activation -> jax.nn.gelu(approximate=...): exact GELU (BERT) or the tanh
# approximation (GPT-2's "gelu_new").
MLP_ACTIVATIONS = {"gelu": False, "gelu_tanh": True}

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
NORM_POSITIONS = ("pre", "post")


@settings
class TransformerConfig:
    """The config.model fields of a Transformer stack, shared by every family."""

    embed_dim: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float
    attention_dropout_rate: float
    layer_norm_epsilon: float
    norm_position: str  # "post" (BERT) | "pre" (GPT, ViT)
    compute_dtype: str  # "float32" | "bfloat16" ("auto" is resolved before the model is built)
    attention_backend: str = "auto"  # auto | xla | cudnn | splash: attention_backends.py
    remat: str = "none"  # a REMAT_POLICIES name
    scan_layers: bool = False  # True: blocks stacked on a 'layers' axis, one nnx.scan
    mlp_activation: str = "gelu"  # a MLP_ACTIVATIONS name
    use_bias: bool = True  # biases on the attention projections
    kernel_init: str = "normal"  # attention and MLP kernels: a KERNEL_INITS name

    def check(self, path: str) -> None:
        """Raises a ConfigError naming the field of `path` whose value is not one it allows."""
        for field, allowed in (
            ("norm_position", list(NORM_POSITIONS)),
            ("remat", list(REMAT_POLICIES)),
            ("mlp_activation", sorted(MLP_ACTIVATIONS)),
            ("kernel_init", sorted(KERNEL_INITS)),
        ):
            if getattr(self, field) not in allowed:
                raise ConfigError(
                    f"{path}.{field} must be one of {allowed}, got {getattr(self, field)!r}"
                )
        self.attention_kernel()  # a backend this platform can run for this model, or ConfigError

    def attention_kernel(self) -> str:
        """attention_backend on this machine's platform, "auto" resolved (see
        attention_backends.check_attention_backend)."""
        return check_attention_backend(dataclasses.asdict(self), jax.default_backend())


def compute_dtype(config) -> jnp.dtype:
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
    kernel_init=NORMAL_INIT,
) -> nnx.Linear:
    """A Linear layer with BERT's N(0, 0.02) init (or `kernel_init`) and logical axis names on
    kernel and bias (preferred_element_type=float32 for outputs that feed a softmax or a loss)."""
    return nnx.Linear(
        features_in,
        features_out,
        dtype=dtype,
        preferred_element_type=preferred_element_type,
        kernel_init=nnx.with_partitioning(kernel_init, axes),
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


class Mlp(nnx.Module):
    """dense -> GELU (exact, as in BERT, or the tanh approximation of GPT-2) -> dense."""

    def __init__(
        self,
        embed_dim: int,
        mlp_dim: int,
        *,
        dtype,
        rngs: nnx.Rngs,
        activation: str = "gelu",
        kernel_init=NORMAL_INIT,
    ):
        init = dict(dtype=dtype, rngs=rngs, kernel_init=kernel_init)
        self.wi = dense(embed_dim, mlp_dim, ("embed", "mlp"), **init)
        self.wo = dense(mlp_dim, embed_dim, ("mlp", "embed"), **init)
        self.approximate_gelu = MLP_ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = jax.nn.gelu(self.wi(x), approximate=self.approximate_gelu)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return self.wo(hidden)


class Block(nnx.Module):
    """Attention + MLP with residuals; norm_position "post" (BERT) or "pre" (GPT, ViT)."""

    def __init__(self, config: TransformerConfig, *, rotary: bool, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        self.attention = MultiHeadAttention(
            config.embed_dim,
            config.num_heads,
            config.head_dim,
            dropout_rate=config.attention_dropout_rate,
            dtype=dtype,
            backend=config.attention_kernel(),
            rngs=rngs,
            use_bias=config.use_bias,
            rotary=rotary,
            kernel_init=KERNEL_INITS[config.kernel_init],
        )
        self.mlp = Mlp(
            config.embed_dim,
            config.mlp_dim,
            dtype=dtype,
            rngs=rngs,
            activation=config.mlp_activation,
            kernel_init=KERNEL_INITS[config.kernel_init],
        )
        self.attention_norm = layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
        self.mlp_norm = layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
        self.dropout = Dropout(config.dropout_rate)
        self.pre_norm = config.norm_position == "pre"
        self.dtype = dtype

    def __call__(
        self, x: jax.Array, context: ForwardContext, cache: dict | None = None
    ) -> tuple[jax.Array, dict | None]:
        """([B, L, embed], the updated KV cache) of [B, L, embed]; the cache is None without
        one (see MultiHeadAttention)."""

        def drop(y):
            return self.dropout(y, deterministic=context.deterministic, rngs=context.rngs)

        def attention(y):
            return self.attention(y.astype(self.dtype), context, cache)

        def mlp(y):
            return self.mlp(y.astype(self.dtype))

        # MultiHeadAttention returns (out, cache) only when given a cache.
        if self.pre_norm:
            attended = attention(self.attention_norm(x))
            attended, new_cache = attended if cache is not None else (attended, None)
            x = x + drop(attended)
            x = x + drop(mlp(self.mlp_norm(x)))
        else:
            attended = attention(x)
            attended, new_cache = attended if cache is not None else (attended, None)
            x = self.attention_norm(x + drop(attended))
            x = self.mlp_norm(x + drop(mlp(x)))
        return constrain(x, HIDDEN_AXES), new_cache


def stacked_blocks(config: TransformerConfig, *, rotary: bool, rngs: nnx.Rngs) -> Block:
    """num_layers Blocks as one Block whose params have a leading 'layers' axis (for scan)."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(
        in_axes=(0,),
        out_axes=0,
        axis_size=config.num_layers,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def create(rngs: nnx.Rngs) -> Block:
        return Block(config, rotary=rotary, rngs=rngs)

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
    [num_layers, ...] on the logical axis 'layers') and runs them with one nnx.scan, so the step
    compiles one block instead of num_layers; False (default) keeps a list of blocks, params
    under layers/0, layers/1, ... model.remat wraps each block in nnx.remat with a
    REMAT_POLICIES policy either way. `rotary`: rotary positions in every attention (GPT).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, rotary: bool = False):
        self.remat = config.remat
        self.scan_layers = config.scan_layers
        if self.scan_layers:
            self.layers = stacked_blocks(config, rotary=rotary, rngs=rngs)
        else:
            self.layers = nnx.List(
                [Block(config, rotary=rotary, rngs=rngs) for _ in range(config.num_layers)]
            )
        self.final_norm = (
            layer_norm(config.embed_dim, config.layer_norm_epsilon, rngs=rngs)
            if config.norm_position == "pre"
            else None
        )

    def __call__(
        self, x: jax.Array, context: ForwardContext, cache: list[dict] | dict | None = None
    ) -> tuple[jax.Array, list[dict] | dict | None]:
        """([B, L, embed] of [B, L, embed], the updated KV cache or None without one).

        cache: one {"key", "value"} per layer, a list of them, or with scan_layers one dict of
        arrays stacked on a leading layer axis; this call's keys and values are written at
        context.cache_index (see MultiHeadAttention).
        """

        # The Rngs are an argument, not read from `context`: in a scan they ride in the carry.
        def apply_block(block: Block, x: jax.Array, rngs: nnx.Rngs | None, layer_cache):
            return block(x, dataclasses.replace(context, rngs=rngs), layer_cache)

        # graph_updates=False: the blocks only update Variables (the Rngs counts), never their
        # structure, so the transforms skip the graph bookkeeping; it also lets the stack run
        # under a trace (jax.make_jaxpr, eval_shape) it was not built in.
        policy = REMAT_POLICIES[self.remat]
        if policy is not None:
            # Inside a scan the loop already keeps XLA from merging the recomputation away.
            apply_block = nnx.remat(
                apply_block, policy=policy, prevent_cse=not self.scan_layers, graph_updates=False
            )
        if self.scan_layers:
            # The Rngs ride in the carry: block i draws the dropout keys of the plain loop's i.
            @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph_updates=False)
            def scan_blocks(block: Block, carry, layer_cache):
                x, rngs = carry
                x, layer_cache = apply_block(block, x, rngs, layer_cache)
                return (x, rngs), layer_cache

            (x, _), new_cache = scan_blocks(self.layers, (x, context.rngs), cache)
        else:
            new_cache = []
            for i, block in enumerate(self.layers):
                layer_cache = None if cache is None else cache[i]
                x, layer_cache = apply_block(block, x, context.rngs, layer_cache)
                new_cache.append(layer_cache)
        x = x if self.final_norm is None else self.final_norm(x)
        return x, None if cache is None else new_cache
