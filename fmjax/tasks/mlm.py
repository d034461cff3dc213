"""BERT masked language modeling: batch layout, loss, masked-token accuracy, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from fmjax.data.task_data import TaskData
from fmjax.tasks.base import arrays
from fmjax.tasks.sequence_task import SequenceTask


class MaskedLanguageModeling(SequenceTask):
    """Predict the original ids at masked positions (BERT's 15% / 80-10-10 corruption)."""

    name = "mlm"
    model_inputs = ("input_ids", "token_type_ids", "attention_mask", "masked_positions")
    targets, weights = "masked_ids", "masked_weights"  # logits at the masked positions

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.max_predictions = int(config.task.max_predictions)

    def build_data(self) -> TaskData:
        """Corpus -> tokenizer -> packed sequences -> masked batches (see fmjax.data.mlm)."""
        from fmjax.data.mlm import build_mlm_data

        return build_mlm_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` examples."""
        tokens = (batch_size, self.seq_len)
        predictions = (batch_size, self.max_predictions)
        return {
            **arrays(tokens, jnp.int32, "input_ids", "token_type_ids", "attention_mask"),
            **arrays(predictions, jnp.int32, "masked_positions", "masked_ids"),
            **arrays(predictions, jnp.float32, "masked_weights"),
        }

    def head_forward_flops(self) -> float:
        """The MLM head at each of max_predictions positions: 2 * (d * d + d * V), transform
        and tied decoder."""
        d, vocab_size = self.config.model.embed_dim, self.config.model.vocab_size
        return self.max_predictions * 2 * (d * d + d * vocab_size)
