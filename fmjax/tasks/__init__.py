"""Training objectives: each task knows its batch, loss, metrics and FLOPs per example.

A task's metrics are `{name: (sum, count)}` pairs; the trainer adds them up over steps or eval
batches and reports sum / count, so averages are weighted correctly. A task may also define
`derived_metrics(values) -> dict` (e.g. perplexity from the mean loss), added to eval results,
or `evaluate(program, params, eval_batches) -> dict` to replace the per-batch sums when a metric
needs the whole split at once (retrieval recall over all held-out pairs).
"""

from __future__ import annotations

import ml_collections

from fmjax.errors import ConfigError


def build_task(config: ml_collections.ConfigDict):
    """The task object named by config.task.name."""
    from fmjax.tasks.causal_lm import CausalLanguageModeling
    from fmjax.tasks.contrastive import ContrastiveImageText
    from fmjax.tasks.image_classification import ImageClassification
    from fmjax.tasks.mlm import MaskedLanguageModeling
    from fmjax.tasks.text_classification import TextClassification

    tasks = {
        "mlm": MaskedLanguageModeling,
        "causal_lm": CausalLanguageModeling,
        "image_classification": ImageClassification,
        "contrastive": ContrastiveImageText,
        "text_classification": TextClassification,
    }
    name = config.task.get("name", "")
    if name not in tasks:
        raise ConfigError(f"unknown task.name {name!r}; known tasks: {sorted(tasks)}")
    return tasks[name](config)
