"""Causal language modeling (GPT): batch layout, next-token loss, accuracy, perplexity, FLOPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.data.task_data import TaskData
from fmjax.tasks.base import Metrics, Task, arrays
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops
from fmjax.tasks.losses import weighted_cross_entropy


class CausalLanguageModeling(Task):
    """Predict every token of a packed document from the tokens before it."""

    name = "causal_lm"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.seq_len = int(config.data.seq_len)

    def build_data(self) -> TaskData:
        """Corpus -> byte-level BPE -> packed documents -> batches (see fmjax.data.clm)."""
        from fmjax.data.clm import build_clm_data

        return build_clm_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` packed rows."""
        tokens = (batch_size, self.seq_len)
        return {
            **arrays(tokens, jnp.int32, "input_ids", "target_ids", "segment_ids", "positions"),
            **arrays(tokens, jnp.float32, "loss_weights"),
        }

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean next-token cross-entropy over weighted positions, and (sum, count) metrics."""
        logits = model(
            batch["input_ids"],
            batch["positions"],
            batch["segment_ids"],
            deterministic=deterministic,
            rngs=rngs,
        )
        return weighted_cross_entropy(logits, batch["target_ids"], batch["loss_weights"])

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Perplexity = exp(mean token loss) of evaluated values."""
        return {"perplexity": math.exp(min(values["loss"], 700.0))}

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """The decoder's FLOPs (fmjax.tasks.flops) over seq_len tokens, plus the LM head
        (tied or not) at every token: 2 * d * V."""
        model = self.config.model
        head = self.seq_len * 2 * model.embed_dim * model.vocab_size
        decoder = transformer_forward_flops(model, self.seq_len)
        return TRAIN_FLOPS_PER_FORWARD * (decoder + head)
