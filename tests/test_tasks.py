"""The task contract: the shared loss vs NumPy, tasks named by module path, whole-split predict."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from fmjax.data.task_data import array_batches
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.tasks import build_task
from fmjax.tasks.base import Task
from fmjax.tasks.losses import weighted_cross_entropy
from fmjax.tasks.mlm import MaskedLanguageModeling
from fmjax.train.run import open_run


def smoke_config() -> ml_collections.ConfigDict:
    return experiment_config("bert_tiny", "smoke")


def naive_cross_entropy(logits, labels, smoothing):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    classes = logits.shape[-1]
    targets = np.eye(classes)[labels] * (1 - smoothing) + smoothing / classes
    return -np.sum(targets * log_probs, axis=-1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_cross_entropy_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(3, 5))
    weights = (rng.random((3, 5)) < 0.6).astype(np.float32)
    loss, metrics = weighted_cross_entropy(logits, labels, weights, smoothing)
    expected = naive_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(metrics["loss"][0], np.sum(expected * weights), rtol=1e-5)
    np.testing.assert_allclose(loss, np.sum(expected * weights) / weights.sum(), rtol=1e-5)
    correct = (np.argmax(logits, axis=-1) == labels) * weights
    assert float(metrics["accuracy"][0]) == correct.sum()
    assert float(metrics["accuracy"][1]) == weights.sum()


def test_a_task_named_by_module_path_is_built_and_checked():
    config = smoke_config()
    config.task.name = "fmjax.tasks.mlm:MaskedLanguageModeling"
    assert isinstance(build_task(config), MaskedLanguageModeling)
    for name, message in [
        ("fmjax.tasks.nowhere:Task", "cannot import"),
        ("fmjax.tasks.mlm:NoSuchTask", "cannot import"),
        ("fmjax.errors:ConfigError", "not a subclass"),
        ("masked_lm", "known tasks"),
    ]:
        config.task.name = name
        with pytest.raises(ConfigError, match=message):
            build_task(config)


def test_a_task_missing_a_required_part_cannot_be_built():
    class NoFlops(Task):
        name = "no_flops"

        def build_data(self): ...
        def batch_spec(self, batch_size): ...
        def loss_and_metrics(self, model, batch, *, deterministic, rngs): ...
        def tokens_per_example(self): ...

    with pytest.raises(TypeError, match="train_flops_per_example"):
        NoFlops(ml_collections.ConfigDict())


def test_predict_keeps_the_real_rows_of_padded_batches_in_order():
    """11 rows in batches of 8 on 8 devices: every real row once, in order, none of the padding."""
    config = smoke_config()
    config.train.batch_size = 8
    config.mesh.update(data=8, fsdp=1, tensor=1)
    rows = np.arange(11 * 3, dtype=np.int32).reshape(11, 3)
    with open_run(config) as run:
        params = run.program.init_state()["params"]
        doubled = run.program.predict(
            params, array_batches({"x": rows}, 8), lambda model, batch: batch["x"] * 2
        )
    np.testing.assert_array_equal(doubled, rows * 2)
