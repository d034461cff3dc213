"""BERT masked language modeling: batch layout, loss, masked-token accuracy, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


class MaskedLanguageModeling:
    """Predict the original ids at masked positions (BERT's 15% / 80-10-10 corruption)."""

    name = "mlm"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.seq_len = int(config.data.seq_len)
        self.max_predictions = int(config.task.max_predictions)

    def build_data(self):
        """Corpus -> tokenizer -> packed sequences -> masked batches (see fmjax.data.mlm)."""
        from fmjax.data.mlm import build_mlm_data

        return build_mlm_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` examples."""
        tokens = (batch_size, self.seq_len)
        predictions = (batch_size, self.max_predictions)
        return {
            "input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "token_type_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "masked_positions": jax.ShapeDtypeStruct(predictions, jnp.int32),
            "masked_ids": jax.ShapeDtypeStruct(predictions, jnp.int32),
            "masked_weights": jax.ShapeDtypeStruct(predictions, jnp.float32),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        """Mean cross-entropy over real masked positions, and (sum, count) metrics."""
        logits = model(
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            batch["masked_positions"],
            deterministic=deterministic,
            rngs=rngs,
        ).astype(jnp.float32)
        weights = batch["masked_weights"]
        token_losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["masked_ids"])
        loss_sum = jnp.sum(token_losses * weights)
        count = jnp.sum(weights)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == batch["masked_ids"]) * weights)
        loss = loss_sum / jnp.maximum(count, 1.0)
        return loss, {"loss": (loss_sum, count), "accuracy": (correct, count)}

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """Model FLOPs of one training example (forward + backward = 3 x forward).

        Forward, counting 2 FLOPs per multiply-add and only matmuls (embedding lookups,
        norms, softmax and the optimizer are ignored, as in the PaLM/MaxText MFU convention):
          per token and layer: 2 * (4 * d * h * k + 2 * d * f)   q, k, v, out projections; MLP
                               + 2 * 2 * L * h * k                 Q·Kᵀ and probs·V
          per masked position: 2 * (d * d + d * V)                 MLM transform, tied decoder
        with d = embed_dim, h = num_heads, k = head_dim, f = mlp_dim, L = seq_len, V = vocab.
        """
        model = self.config.model
        d, h, k = model.embed_dim, model.num_heads, model.head_dim
        f, vocab, length = model.mlp_dim, model.vocab_size, self.seq_len
        per_token_layer = 2 * (4 * d * h * k + 2 * d * f) + 4 * length * h * k
        encoder = length * model.num_layers * per_token_layer
        head = self.max_predictions * 2 * (d * d + d * vocab)
        return 3.0 * (encoder + head)
