"""BERT masked language modeling: batch layout, loss, masked-token accuracy, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fmjax.data.task_data import TaskData
from fmjax.tasks.base import Metrics, Task, arrays
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops
from fmjax.tasks.losses import weighted_cross_entropy


class MaskedLanguageModeling(Task):
    """Predict the original ids at masked positions (BERT's 15% / 80-10-10 corruption)."""

    name = "mlm"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.seq_len = int(config.data.seq_len)
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

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean cross-entropy over real masked positions, and (sum, count) metrics."""
        logits = model(
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            batch["masked_positions"],
            deterministic=deterministic,
            rngs=rngs,
        )
        return weighted_cross_entropy(logits, batch["masked_ids"], batch["masked_weights"])

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """The encoder's FLOPs (fmjax.tasks.flops) over seq_len tokens, plus the MLM head at
        each of max_predictions positions: 2 * (d * d + d * V), transform and tied decoder."""
        model = self.config.model
        d = model.embed_dim
        head = self.max_predictions * 2 * (d * d + d * model.vocab_size)
        encoder = transformer_forward_flops(model, self.seq_len)
        return TRAIN_FLOPS_PER_FORWARD * (encoder + head)
