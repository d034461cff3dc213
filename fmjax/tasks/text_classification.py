"""Text classification (a BERT encoder + head): cross-entropy; eval over the whole test split with
accuracy, macro precision / recall / F1 and the confusion matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from fmjax.data.task_data import TaskData
from fmjax.models import model_settings
from fmjax.tasks.base import arrays
from fmjax.tasks.losses import cross_entropy
from fmjax.tasks.sequence_task import SequenceTask

if TYPE_CHECKING:
    from fmjax.train.step import TrainProgram

MAX_PRINTED_CLASSES = 10  # a larger confusion matrix is summarized by its most confused pairs


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C]: entry (i, j) counts examples of true class i predicted as class j."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def classification_metrics(matrix: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 (mean over classes) of a confusion matrix.

    A class never predicted has precision 0, one never present recall 0, and F1 is 0 where
    precision + recall is 0 (scikit-learn's zero_division=0); classes absent from both the
    labels and the predictions are left out of the means, as scikit-learn does.
    """
    matrix = np.asarray(matrix, np.float64)
    true_positives = np.diag(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(
        true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0
    )
    recall = np.divide(true_positives, actual, out=np.zeros_like(actual), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    seen = (predicted + actual) > 0
    return {
        "accuracy": float(true_positives.sum() / max(matrix.sum(), 1.0)),
        "precision": float(precision[seen].mean()),
        "recall": float(recall[seen].mean()),
        "macro_f1": float(f1[seen].mean()),
    }


def format_confusion_matrix(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The matrix as a table (rows: true class, columns: predicted), or for many classes the
    most frequent confusions."""
    matrix = np.asarray(matrix)
    if len(class_names) <= MAX_PRINTED_CLASSES:
        width = max(6, *(len(name) for name in class_names), len(str(matrix.max())))
        header = " " * width + " | " + " ".join(f"{n:>{width}}" for n in class_names)
        rows = [
            f"{name:>{width}} | " + " ".join(f"{v:>{width}}" for v in row)
            for name, row in zip(class_names, matrix, strict=True)
        ]
        return "\n".join(["confusion matrix (rows: true, columns: predicted)", header, *rows])
    off_diagonal = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
    order = np.argsort(off_diagonal, axis=None)[::-1][:5]
    pairs = [np.unravel_index(i, matrix.shape) for i in order]
    lines = [f"  {class_names[i]} -> {class_names[j]}: {matrix[i, j]}" for i, j in pairs]
    return "\n".join(["most frequent confusions (true -> predicted):", *lines])


class TextClassification(SequenceTask):
    """Predict one of model.num_classes labels per text; weights 0 mark padding rows."""

    name = "text_classification"
    model_inputs = ("input_ids", "attention_mask")
    model_keyword_inputs = ("token_type_ids",)  # a classifier of another family may ignore them
    targets, weights = "labels", "weights"

    def __init__(self, config: ml_collections.ConfigDict):
        from fmjax.data.text_classification import resolve_num_classes

        resolve_num_classes(config)  # model.num_classes=0: the number of classes in the data
        super().__init__(config)
        self.num_classes = int(config.model.num_classes)
        self.label_smoothing = float(config.task.get("label_smoothing", 0.0))

    def build_data(self) -> TaskData:
        """Tokenized train loader and the whole test split (see fmjax.data.text_classification)."""
        from fmjax.data.text_classification import build_text_classification_data

        return build_text_classification_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` texts."""
        tokens = (batch_size, self.seq_len)
        return {
            **arrays(tokens, jnp.int32, "input_ids", "attention_mask", "token_type_ids"),
            **arrays((batch_size,), jnp.int32, "labels"),
            **arrays((batch_size,), jnp.float32, "weights"),
        }

    def logits_and_labels(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(logits [B, C], labels [B]) of a held-out batch, for TrainProgram.predict."""
        return self.logits(model, batch, deterministic=True, rngs=None), batch["labels"]

    def evaluate(self, program: TrainProgram, params: Any, data: TaskData) -> dict[str, Any]:
        """Loss, accuracy, macro precision / recall / F1 and the confusion matrix (a list of
        rows, also printed) over the whole test split."""
        logits, labels = program.predict(params, data.eval_batches, self.logits_and_labels)
        matrix = confusion_matrix(labels, np.argmax(logits, axis=-1), self.num_classes)
        losses = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), self.label_smoothing)
        values: dict[str, Any] = {
            "loss": float(np.mean(losses)),
            **classification_metrics(matrix),
            "num_examples": float(len(labels)),
            "confusion_matrix": matrix.tolist(),
        }
        if jax.process_index() == 0:
            # tqdm.write keeps a running progress bar below the table
            tqdm.write(format_confusion_matrix(matrix, data.class_names))
        return values

    def head_forward_flops(self) -> float:
        """The head per text: 2 * d * d (with the pooler) + 2 * d * C."""
        model = self.config.model
        d = model.embed_dim
        # BERT's pooler is a bert_classifier field; another family's classifier has none.
        pooler = bool(getattr(model_settings(model), "pooler", False))
        return (2 * d * d if pooler else 0) + 2 * d * self.num_classes
