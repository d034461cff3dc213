"""Model selection and label budgets for fine-tuning: a validation split carved from the train
examples (data.validation_examples) and a seeded subset of the rest (data.train_examples)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fmjax.errors import ConfigError

# The validation carve does not move with config.seed: every seed and label budget of a
# transfer curve selects its checkpoint on the same held-out reviews.
VALIDATION_SEED = 20_250_101
EVAL_SPLITS = ("test", "validation")


def _take(split: tuple, indices: np.ndarray) -> tuple:
    """(texts, pairs or None, labels) restricted to `indices`, in their order."""
    return tuple(None if column is None else [column[i] for i in indices] for column in split)


def select_splits(splits: dict, data_config: Any, seed: int) -> tuple[dict, str, dict]:
    """(splits with "validation" carved out of "train" and "train" cut to data.train_examples,
    the split to evaluate on (data.eval_split), provenance of the selection).

    data.validation_examples=0 and data.train_examples=0 (the defaults) leave train whole.
    """
    num_validation = int(data_config.get("validation_examples", 0) or 0)
    num_train = int(data_config.get("train_examples", 0) or 0)
    eval_split = str(data_config.get("eval_split", "test") or "test")
    if eval_split not in EVAL_SPLITS:
        raise ConfigError(f"data.eval_split={eval_split!r}; use one of {EVAL_SPLITS}")
    if eval_split == "validation" and num_validation <= 0:
        raise ConfigError(
            "data.eval_split=validation needs data.validation_examples > 0 (carved from train)"
        )
    pool = len(splits["train"][-1])
    if num_validation + max(num_train, 1) > pool:
        raise ConfigError(
            f"data.validation_examples={num_validation} + data.train_examples={num_train} > "
            f"the {pool} train examples; lower them"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(pool)
    validation, rest = np.sort(order[:num_validation]), order[num_validation:]
    if num_train > 0:  # the label budget: a subset drawn with the run's seed
        rest = np.random.default_rng(seed).permutation(rest)[:num_train]
    selected = {**splits, "train": _take(splits["train"], np.sort(rest))}
    if num_validation:
        selected["validation"] = _take(splits["train"], validation)
    provenance = {
        "eval_split": eval_split,
        "num_examples": {name: len(split[-1]) for name, split in selected.items()},
        "validation_seed": VALIDATION_SEED,
        "train_subset_seed": seed if num_train else None,
    }
    return selected, eval_split, provenance
