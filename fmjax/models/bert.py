"""BERT (Devlin et al. 2019): post-LN encoder with a masked-LM head tied to the embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.models.attention import ForwardContext
from fmjax.models.attention_backends import AttentionMask
from fmjax.models.dropout import Dropout
from fmjax.models.embeddings import Embedding
from fmjax.models.settings import settings
from fmjax.models.transformer import (
    HIDDEN_AXES,
    Stack,
    TransformerConfig,
    compute_dtype,
    dense,
    layer_norm,
)
from fmjax.parallel.sharding import constrain


@settings
class BertConfig(TransformerConfig):
    """config.model of model.family="bert": the Transformer fields plus the embeddings'."""

    vocab_size: int
    max_seq_len: int
    type_vocab_size: int


class BertEncoder(nnx.Module):
    """Token + position + token-type embeddings, LayerNorm and a Transformer stack (no head).

    Heads subclass it, so every BERT model shares these parameter paths (a pretrained
    checkpoint loads into any of them).
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        d = config.embed_dim
        self.token_embed = Embedding(config.vocab_size, d, "vocab", dtype=dtype, rngs=rngs)
        self.position_embed = Embedding(config.max_seq_len, d, "position", dtype=dtype, rngs=rngs)
        self.type_embed = Embedding(config.type_vocab_size, d, "token_type", dtype=dtype, rngs=rngs)
        self.embed_norm = layer_norm(d, config.layer_norm_epsilon, rngs=rngs)
        self.embed_dropout = Dropout(config.dropout_rate)
        self.encoder = Stack(config, rngs=rngs)
        self.dtype = dtype

    def encode(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Final hidden states [B, L, embed_dim] (float32) of int32 [B, L] inputs."""
        return self.encode_embeddings(
            self.token_embed(input_ids),
            token_type_ids,
            attention_mask,
            deterministic=deterministic,
            rngs=rngs,
        )

    def encode_embeddings(
        self,
        token_embeddings: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Final hidden states [B, L, embed_dim] (float32) from token embeddings [B, L, d]
        (the entry point for gradient x input attributions)."""
        positions = jnp.arange(token_embeddings.shape[1])[None, :]
        x = token_embeddings + self.position_embed(positions)
        x = x + self.type_embed(token_type_ids)
        x = self.embed_norm(x.astype(jnp.float32))
        x = constrain(self.embed_dropout(x, deterministic=deterministic, rngs=rngs), HIDDEN_AXES)
        mask = AttentionMask(key_padding=attention_mask)
        hidden, _ = self.encoder(x, ForwardContext(mask, deterministic, rngs))
        return hidden


class Bert(BertEncoder):
    """BERT with the masked-LM head tied to the token embeddings."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        dtype, d = self.dtype, config.embed_dim
        # MLM head: dense -> GELU -> LayerNorm, then the tied decoder plus a per-token bias.
        self.mlm_transform = dense(d, d, ("embed", "embed_transform"), dtype=dtype, rngs=rngs)
        self.mlm_norm = layer_norm(d, config.layer_norm_epsilon, rngs=rngs)
        self.mlm_bias = nnx.Param(
            nnx.with_partitioning(nnx.initializers.zeros_init(), ("vocab",))(
                rngs.params(), (config.vocab_size,), jnp.float32
            )
        )

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        masked_positions: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """MLM logits float32 [B, P, vocab], computed only at masked_positions [B, P]."""
        hidden = self.encode(
            input_ids, token_type_ids, attention_mask, deterministic=deterministic, rngs=rngs
        )
        gathered = jnp.take_along_axis(hidden, masked_positions[:, :, None], axis=1)
        return self.mlm_logits(gathered)

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """The MLM head on hidden states [..., embed_dim] -> float32 logits [..., vocab]."""
        x = jax.nn.gelu(self.mlm_transform(hidden.astype(self.dtype)), approximate=False)
        x = self.mlm_norm(x.astype(jnp.float32))
        logits = self.token_embed.attend(x.astype(self.dtype)).astype(jnp.float32)
        logits = logits + self.mlm_bias[...]
        return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


Model = Bert  # model.family="bert" (fmjax/models/__init__.py)
