"""What the text tasks (mlm, causal_lm, text_classification) share: a model over data.seq_len
tokens, fed named batch fields, whose logits are scored by weighted cross-entropy against one."""

from __future__ import annotations

import abc
from typing import ClassVar

import jax
import ml_collections
from flax import nnx

from fmjax.tasks.base import Metrics, Task
from fmjax.tasks.flops import TRAIN_FLOPS_PER_FORWARD, transformer_forward_flops
from fmjax.tasks.losses import weighted_cross_entropy


class SequenceTask(Task):
    """A Task on sequences of data.seq_len tokens: a subclass names the batch fields the model
    reads, the targets and their weights, and gives its head's FLOPs (and data and batch_spec)."""

    model_inputs: ClassVar[tuple[str, ...]]  # batch fields passed to the model, in order
    model_keyword_inputs: ClassVar[tuple[str, ...]] = ()  # batch fields passed by name
    targets: ClassVar[str]  # the batch field of the target ids (or labels)
    weights: ClassVar[str]  # the batch field of their weights (0: masked out or padding)
    label_smoothing: float = 0.0

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.seq_len = int(config.data.seq_len)

    def logits(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> jax.Array:
        """The model's logits for the targets of `batch`, from its model_inputs fields."""
        keywords = {name: batch[name] for name in self.model_keyword_inputs}
        inputs = (batch[name] for name in self.model_inputs)
        return model(*inputs, deterministic=deterministic, rngs=rngs, **keywords)

    @abc.abstractmethod
    def head_forward_flops(self) -> float:
        """Forward FLOPs of one example outside the Transformer stack (its output head)."""

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """Mean cross-entropy over the weighted targets, and (sum, count) loss and accuracy."""
        logits = self.logits(model, batch, deterministic=deterministic, rngs=rngs)
        return weighted_cross_entropy(
            logits, batch[self.targets], batch[self.weights], self.label_smoothing
        )

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """The Transformer stack's FLOPs (fmjax.tasks.flops) over seq_len tokens plus the head's,
        forward and backward."""
        stack = transformer_forward_flops(self.config.model, self.seq_len)
        return TRAIN_FLOPS_PER_FORWARD * (stack + self.head_forward_flops())
