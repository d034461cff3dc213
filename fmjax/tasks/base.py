"""The task contract: what the trainer asks of every training objective.

A task is one file: a subclass of `Task` that sets `name` and implements the five abstract
methods; a config names it by task.name ("module:ClassName", see fmjax.tasks). Metrics are
`{name: (sum, count)}` pairs that the program adds up over steps or eval batches and reports as
sum / count, so averages stay weighted.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import ml_collections
from flax import nnx

if TYPE_CHECKING:  # type-only: tasks sit below train/ and data/ loads grain and tokenizers
    from fmjax.data.task_data import TaskData
    from fmjax.train.step import TrainProgram

Metrics = dict[str, tuple[jax.Array, jax.Array]]  # name -> (sum, count)


def arrays(shape: tuple[int, ...], dtype: Any, *names: str) -> dict[str, jax.ShapeDtypeStruct]:
    """A ShapeDtypeStruct of `shape` and `dtype` under each of `names` (parts of a batch_spec)."""
    return {name: jax.ShapeDtypeStruct(shape, dtype) for name in names}


class Task(abc.ABC):
    """One objective: its data, batch layout, loss and metrics, and its FLOPs per example."""

    name: ClassVar[str]
    # False when the loss couples the examples of a batch (in-batch negatives), so splitting the
    # batch into microbatches (train.grad_accum_steps > 1) would change it.
    supports_grad_accum: ClassVar[bool] = True

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def build_data(self) -> TaskData:
        """The train loader, held-out batches and provenance of config.data."""

    @abc.abstractmethod
    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` examples."""

    @abc.abstractmethod
    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, Metrics]:
        """The scalar loss to minimize and (sum, count) metrics; the loss must be the "loss"
        metric's sum / count (gradient accumulation relies on it)."""

    @abc.abstractmethod
    def tokens_per_example(self) -> int:
        """Tokens (or patches) one example feeds the model: what tokens_per_s counts."""

    @abc.abstractmethod
    def train_flops_per_example(self) -> float:
        """Model FLOPs of one training example (forward + backward), for MFU."""

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the evaluated means (e.g. perplexity); none by default."""
        del values
        return {}

    def evaluate(self, program: TrainProgram, params: Any, data: TaskData) -> dict[str, Any]:
        """Eval metrics: the (sum, count) metrics added up over data.eval_batches, plus
        derived_metrics. Override when a metric needs the whole split at once (retrieval,
        macro F1), using program.predict."""
        values = program.mean_metrics(params, data.eval_batches)
        return {**values, **self.derived_metrics(values)}
