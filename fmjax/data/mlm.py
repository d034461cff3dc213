"""Masked-LM data for BERT: prepared WordPiece-packed shards -> masked batches."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.pipeline import position_uniforms
from fmjax.data.preparation import prepare_text
from fmjax.data.task_data import TaskData
from fmjax.data.text import mask_batch_for_mlm, mask_for_mlm

EVAL_SEED_OFFSET = 1_000_003  # eval masking uses its own stream, fixed for the whole run


def build_mlm_data(config: Any) -> TaskData:
    """Builds (or loads from the data dir cache) the MLM train loader and fixed eval batches."""
    vocab = int(config.model.vocab_size)
    prepared = prepare_text(config, "mlm")
    special = tokenizer_lib.wordpiece_special_ids(
        prepared.tokenizer, prepared.provenance["tokenizer"]["path"]
    )
    tokenizer_lib.check_ids_fit(special.all(), vocab, prepared.provenance["tokenizer"]["path"])
    transform = functools.partial(
        _mask_transform,
        special=special,
        mask_prob=float(config.task.mask_prob),
        max_predictions=int(config.task.max_predictions),
        vocab_size=prepared.vocab_size,
    )
    train_transform = functools.partial(
        mask_train_batch,
        seed=int(config.seed),
        special=special,
        mask_prob=float(config.task.mask_prob),
        max_predictions=int(config.task.max_predictions),
        vocab_size=prepared.vocab_size,
    )
    eval_seed = int(config.seed) + EVAL_SEED_OFFSET
    return prepared.task_data(config, train_transform, transform, eval_seed)


def mask_train_batch(
    rows: dict[str, np.ndarray],
    positions: np.ndarray,
    *,
    seed: int,
    special: tokenizer_lib.WordpieceIds = tokenizer_lib.FMJAX_WORDPIECE_IDS,
    mask_prob: float,
    max_predictions: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    """Train masking of a batch of rows, vectorized; draws hash (seed, stream position)."""
    input_ids = np.asarray(rows["input_ids"])
    length = input_ids.shape[1]
    return mask_batch_for_mlm(
        input_ids,
        position_uniforms(seed, positions, length, stream=0),
        position_uniforms(seed, positions, max_predictions, stream=1),
        position_uniforms(seed, positions, max_predictions, stream=2),
        mask_prob=mask_prob,
        mask_id=special.mask,
        vocab_size=vocab_size,
        special_ids=special.all(),
        pad_id=special.pad,
    )


def _mask_transform(
    example: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    special: tokenizer_lib.WordpieceIds,
    mask_prob: float,
    max_predictions: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    return mask_for_mlm(
        np.asarray(example["input_ids"]),
        rng,
        mask_prob=mask_prob,
        max_predictions=max_predictions,
        mask_id=special.mask,
        vocab_size=vocab_size,
        special_ids=special.all(),
        pad_id=special.pad,
    )
