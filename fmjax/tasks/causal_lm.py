"""Causal language modeling (GPT): batch layout, next-token loss, accuracy, perplexity, FLOPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


class CausalLanguageModeling:
    """Predict every token of a packed document from the tokens before it."""

    name = "causal_lm"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.seq_len = int(config.data.seq_len)

    def build_data(self):
        """Corpus -> byte-level BPE -> packed documents -> batches (see fmjax.data.clm)."""
        from fmjax.data.clm import build_clm_data

        return build_clm_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` packed rows."""
        tokens = (batch_size, self.seq_len)
        return {
            "input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "target_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "segment_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "positions": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "loss_weights": jax.ShapeDtypeStruct(tokens, jnp.float32),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        """Mean next-token cross-entropy over weighted positions, and (sum, count) metrics."""
        logits = model(
            batch["input_ids"],
            batch["positions"],
            batch["segment_ids"],
            deterministic=deterministic,
            rngs=rngs,
        ).astype(jnp.float32)
        weights = batch["loss_weights"]
        targets = batch["target_ids"]
        token_losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        loss_sum = jnp.sum(token_losses * weights)
        count = jnp.sum(weights)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
        loss = loss_sum / jnp.maximum(count, 1.0)
        return loss, {"loss": (loss_sum, count), "accuracy": (correct, count)}

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Perplexity = exp(mean token loss) of evaluated values."""
        return {"perplexity": math.exp(min(values["loss"], 700.0))}

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """Model FLOPs of one training row (forward + backward = 3 x forward).

        Forward, counting 2 FLOPs per multiply-add and only matmuls (embedding lookups, norms,
        softmax and the optimizer are ignored, as in the PaLM/MaxText MFU convention; the causal
        mask is not discounted, since the dense attention computes all L x L scores):
          per token and layer: 2 * (4 * d * h * k + 2 * d * f)   q, k, v, out projections; MLP
                               + 2 * 2 * L * h * k                 Q·Kᵀ and probs·V
          per token:           2 * d * V                           LM head (tied or not)
        with d = embed_dim, h = num_heads, k = head_dim, f = mlp_dim, L = seq_len, V = vocab.
        """
        model = self.config.model
        d, h, k = model.embed_dim, model.num_heads, model.head_dim
        f, vocab, length = model.mlp_dim, model.vocab_size, self.seq_len
        per_token_layer = 2 * (4 * d * h * k + 2 * d * f) + 4 * length * h * k
        per_token = model.num_layers * per_token_layer + 2 * d * vocab
        return 3.0 * length * per_token
