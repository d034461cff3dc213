"""Training objectives: each task knows its data, batch, loss, metrics and FLOPs per example.

The contract every task implements is fmjax.tasks.base.Task. config.task.name is one of the
built-in names below, or "package.module:ClassName" for a task in its own file.
"""

from __future__ import annotations

import importlib

import ml_collections

from fmjax.errors import ConfigError
from fmjax.tasks.base import Task


def build_task(config: ml_collections.ConfigDict) -> Task:
    """The task object named by config.task.name."""
    from fmjax.tasks.causal_lm import CausalLanguageModeling
    from fmjax.tasks.contrastive import ContrastiveImageText
    from fmjax.tasks.image_classification import ImageClassification
    from fmjax.tasks.mlm import MaskedLanguageModeling
    from fmjax.tasks.simclr import SelfSupervisedImagePairs
    from fmjax.tasks.text_classification import TextClassification

    tasks: dict[str, type[Task]] = {
        "mlm": MaskedLanguageModeling,
        "causal_lm": CausalLanguageModeling,
        "image_classification": ImageClassification,
        "contrastive": ContrastiveImageText,
        "text_classification": TextClassification,
        "simclr": SelfSupervisedImagePairs,
    }
    name = str(config.task.get("name", ""))
    if ":" in name:
        return _task_class(name)(config)
    if name not in tasks:
        raise ConfigError(
            f"unknown task.name {name!r}; known tasks: {sorted(tasks)}, or 'module:ClassName'"
        )
    return tasks[name](config)


def _task_class(path: str) -> type[Task]:
    module_name, _, class_name = path.partition(":")
    try:
        task_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"task.name={path!r}: cannot import it ({error})") from None
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ConfigError(f"task.name={path!r} is not a subclass of fmjax.tasks.base.Task")
    return task_class
