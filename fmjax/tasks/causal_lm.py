"""Causal language modeling (GPT): batch layout, next-token loss, accuracy, perplexity, FLOPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fmjax.data.task_data import TaskData
from fmjax.tasks.base import arrays
from fmjax.tasks.sequence_task import SequenceTask


class CausalLanguageModeling(SequenceTask):
    """Predict every token of a packed document from the tokens before it."""

    name = "causal_lm"
    model_inputs = ("input_ids", "positions", "segment_ids")
    targets, weights = "target_ids", "loss_weights"

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

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Perplexity = exp(mean token loss) of evaluated values."""
        return {"perplexity": math.exp(min(values["loss"], 700.0))}

    def head_forward_flops(self) -> float:
        """The LM head (tied or not) at every token: 2 * d * V each."""
        model = self.config.model
        return self.seq_len * 2 * model.embed_dim * model.vocab_size
