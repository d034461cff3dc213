"""What every task's build_data returns: the train loader, the held-out batches, provenance.

Held-out data is always a sequence of global batches (dicts of numpy arrays, leading axis =
train.batch_size). A batch with a "weights" entry marks padding rows with weight 0: metrics
weight by it, and whole-split predictions (TrainProgram.predict) drop those rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tokenizers

from fmjax.data.pipeline import Loader, example_rng
from fmjax.errors import ConfigError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class TaskData:
    """A task's data: train batches by step, held-out batches, and what they were made from."""

    train: Loader
    eval_batches: Sequence[Batch]
    provenance: dict  # written to manifest.json; its tokenizer sha256 guards resumes
    tokenizer: tokenizers.Tokenizer | None = None  # text tasks
    class_names: tuple[str, ...] = ()  # names of label ids (classification, zero-shot classes)
    class_prompt_ids: np.ndarray | None = None  # int32 [classes, seq_len]: a prompt per class

    @property
    def vocab_size(self) -> int:
        """Tokens in the tokenizer (0 without one)."""
        return self.tokenizer.get_vocab_size() if self.tokenizer is not None else 0


class EvalBatches(Sequence):
    """Every example of a split in order, in batches of batch_size; built on access.

    The last batch is padded with copies of example 0 at weight 0, so metrics weighted by
    `weights` count each real example exactly once.
    """

    def __init__(self, source: Any, transform: Callable, batch_size: int, seed: int):
        if len(source) == 0:
            raise ConfigError("the evaluation split is empty; check data.dataset")
        self.source, self.transform = source, transform
        self.batch_size, self.seed = batch_size, seed
        self.num_examples = len(source)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __getitem__(self, index: int) -> Batch:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.batch_size
        rows = []
        for i in range(start, start + self.batch_size):
            real = i < self.num_examples
            row = self.transform(self.source[i if real else 0], example_rng(self.seed, i))
            row["weights"] = np.float32(1.0 if real else 0.0)
            rows.append(row)
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def array_batches(arrays: dict[str, np.ndarray], batch_size: int) -> EvalBatches:
    """Rows of equally long arrays (e.g. prompt ids) as padded EvalBatches of batch_size."""
    length = len(next(iter(arrays.values())))
    rows = [{name: values[i] for name, values in arrays.items()} for i in range(length)]
    return EvalBatches(rows, lambda row, rng: dict(row), batch_size, seed=0)
