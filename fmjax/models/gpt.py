"""GPT (Radford et al. 2019): a pre-LN decoder-only Transformer over packed documents.

Attention is causal and never crosses a document boundary (segment ids); positions restart
at 0 per document, as learned position embeddings or rotary (RoPE) in every attention layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.models.attention import NORMAL_INIT, ForwardContext, segment_mask
from fmjax.models.attention_backends import AttentionMask
from fmjax.models.dropout import Dropout
from fmjax.models.embeddings import Embedding
from fmjax.models.settings import settings
from fmjax.models.transformer import (
    HIDDEN_AXES,
    Stack,
    TransformerConfig,
    compute_dtype,
    scale_residual_projections,
)
from fmjax.parallel.sharding import constrain


def causal_segment_mask(
    query_segment_ids: jax.Array,
    key_segment_ids: jax.Array,
    query_slots: jax.Array,
    key_slots: jax.Array,
) -> jax.Array:
    """[B, 1, Lq, Lk]: True where the key is at or before the query and in the same document.

    query_slots [Lq] / key_slots [Lk] are absolute indices in the sequence (or KV cache).
    """
    causal = key_slots[None, :] <= query_slots[:, None]
    return causal[None, None] & segment_mask(query_segment_ids, key_segment_ids)


POSITION_EMBEDDINGS = ("learned", "rotary")


@settings
class GptConfig(TransformerConfig):
    """config.model of model.family="gpt": the Transformer fields plus the decoder's."""

    vocab_size: int
    max_seq_len: int
    position_embedding: str  # "learned" | "rotary" (RoPE in every attention)
    tie_embeddings: bool  # output head = the token embedding table (GPT-2); False: its own

    def check(self, path: str) -> None:
        """TransformerConfig.check, plus pre-LN blocks and a known position embedding."""
        super().check(path)
        if self.norm_position != "pre":
            raise ConfigError(f"GPT blocks are pre-LN: set {path}.norm_position='pre'")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"{path}.position_embedding must be 'learned' or 'rotary', "
                f"got {self.position_embedding!r}"
            )


class Gpt(nnx.Module):
    """Token (+ learned position) embeddings, pre-LN blocks, final LN, tied or untied LM head."""

    config_class = GptConfig

    def __init__(self, config: GptConfig, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        d = config.embed_dim
        self.token_embed = Embedding(config.vocab_size, d, "vocab", dtype=dtype, rngs=rngs)
        self.position_embed = (
            Embedding(config.max_seq_len, d, "position", dtype=dtype, rngs=rngs)
            if config.position_embedding == "learned"
            else None
        )
        self.embed_dropout = Dropout(config.dropout_rate)
        rotary = config.position_embedding == "rotary"
        self.decoder = Stack(config, rotary=rotary, rngs=rngs)  # ends with the final LayerNorm
        scale_residual_projections(self.decoder, config.num_layers)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Param(
                nnx.with_partitioning(NORMAL_INIT, ("embed", "vocab"))(
                    rngs.params(), (d, config.vocab_size), jnp.float32
                )
            )
        )
        self.dtype = dtype
        self.num_layers = config.num_layers
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
        cache: dict | None = None,
    ) -> jax.Array | tuple[jax.Array, dict]:
        """Next-token logits float32 [B, L, vocab] of int32 [B, L] inputs.

        With `cache` (from `init_cache`), the L tokens are appended at cache["index"] to what
        earlier calls wrote, attend to them too, and the updated cache is returned as well.
        """
        x = self.token_embed(input_ids)
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        x = self.embed_dropout(x.astype(jnp.float32), deterministic=deterministic, rngs=rngs)
        x = constrain(x, HIDDEN_AXES)
        length = input_ids.shape[1]
        if cache is None:
            # causal_segment_mask(segment_ids, segment_ids, slots, slots), as structure.
            mask = AttentionMask(segment_ids=segment_ids, causal=True)
            hidden, _ = self.decoder(x, ForwardContext(mask, deterministic, rngs, positions))
        else:
            index = cache["index"]
            key_segments = jax.lax.dynamic_update_slice(
                cache["segment_ids"], segment_ids.astype(jnp.int32), (0, index)
            )
            query_slots = index + jnp.arange(length)
            key_slots = jnp.arange(key_segments.shape[1])
            mask = causal_segment_mask(segment_ids, key_segments, query_slots, key_slots)
            context = ForwardContext(mask, deterministic, rngs, positions, cache_index=index)
            hidden, layers = self.decoder(x, context, cache["layers"])
            cache = {"layers": layers, "segment_ids": key_segments, "index": index + length}
        logits = self.logits(hidden)
        return logits if cache is None else (logits, cache)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head on final hidden states [..., embed_dim] -> float32 logits [..., vocab]."""
        hidden = hidden.astype(self.dtype)
        if self.lm_head is None:
            logits = self.token_embed.attend(hidden)
        else:
            head = self.lm_head[...].astype(self.dtype)
            logits = jnp.einsum("...d,dv->...v", hidden, head, preferred_element_type=jnp.float32)
        logits = logits.astype(jnp.float32)
        return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """An empty KV cache for `max_length` tokens per row (segment id 0 = empty slot)."""
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        if self.decoder.scan_layers:  # one cache stacked over layers, scanned with the blocks
            shape = (self.num_layers, *shape)
            layers = {"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
        else:
            layers = [
                {"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
                for _ in range(self.num_layers)
            ]
        return {
            "layers": layers,
            "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
            "index": jnp.int32(0),
        }


Model = Gpt  # model.family="gpt" (fmjax/models/__init__.py)
