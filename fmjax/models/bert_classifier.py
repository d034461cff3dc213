"""BERT text classifier: the BERT encoder, the [CLS] output (optionally through BERT's tanh
pooler) and a linear head to model.num_classes logits.

The embeddings and the encoder are built exactly as in fmjax/models/bert.py, under the same
attribute names (token_embed, position_embed, type_embed, embed_norm, encoder), so a pretrained
BERT checkpoint's params load into it by path (train.init_from); pooler and classifier are new.

Config fields (config.model): BertClassifierConfig.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax.models.bert import BertConfig, BertEncoder
from fmjax.models.dropout import Dropout
from fmjax.models.settings import settings
from fmjax.models.transformer import dense
from fmjax.parallel.sharding import constrain


@settings
class BertClassifierConfig(BertConfig):
    """config.model of model.family="bert_classifier": BERT's fields plus the head's."""

    num_classes: int
    pooler: bool = False  # dense + tanh on [CLS], as BERT's next-sentence pooler
    classifier_dropout_rate: float | None = None  # None: dropout_rate


class BertClassifier(BertEncoder):
    """int32 token ids [B, L] and attention mask [B, L] -> class logits float32 [B, C]."""

    config_class = BertClassifierConfig

    def __init__(self, config: BertClassifierConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        dtype, d = self.dtype, config.embed_dim
        self.pooler = (
            dense(d, d, ("embed", "embed_transform"), dtype=dtype, rngs=rngs)
            if config.pooler
            else None
        )
        rate = config.classifier_dropout_rate
        self.classifier_dropout = Dropout(config.dropout_rate if rate is None else rate)
        self.classifier = dense(
            d,
            config.num_classes,
            ("embed", "classes"),
            dtype=dtype,
            rngs=rngs,
            preferred_element_type=jnp.float32,  # logits feed the loss
        )

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """The token embeddings [B, L, embed_dim] (the input of gradient x input attributions)."""
        return self.token_embed(input_ids)

    def classify(
        self,
        token_embeddings: jax.Array,
        attention_mask: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Class logits float32 [B, C] from token embeddings [B, L, d] (token types 0 unless
        given: 1 marks the second text of a sentence pair)."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros(token_embeddings.shape[:2], jnp.int32)
        hidden = self.encode_embeddings(
            token_embeddings, token_type_ids, attention_mask, deterministic=deterministic, rngs=rngs
        )
        pooled = hidden[:, 0]  # the [CLS] token
        if self.pooler is not None:
            pooled = jnp.tanh(self.pooler(pooled.astype(self.dtype)).astype(jnp.float32))
        pooled = self.classifier_dropout(pooled, deterministic=deterministic, rngs=rngs)
        logits = self.classifier(pooled.astype(self.dtype)).astype(jnp.float32)
        return constrain(logits, ("activation_batch", None))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Class logits float32 [B, num_classes] of int32 token ids [B, L] ([CLS] first)."""
        return self.classify(
            self.embed_tokens(input_ids),
            attention_mask,
            deterministic=deterministic,
            rngs=rngs,
            token_type_ids=token_type_ids,
        )


Model = BertClassifier  # model.family="bert_classifier" (fmjax/models/__init__.py)
