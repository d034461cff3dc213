"""Text classification (a BERT encoder + head): cross-entropy; eval over the whole test split with
accuracy, macro precision / recall / F1 and the confusion matrix."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from fmjax.parallel.sharding import shard_batch

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


class TextClassification:
    """Predict one of model.num_classes labels per text; weights 0 mark padding rows."""

    name = "text_classification"

    def __init__(self, config: ml_collections.ConfigDict):
        from fmjax.data.text_classification import resolve_num_classes

        resolve_num_classes(config)  # model.num_classes=0: the number of classes in the data
        self.config = config
        self.seq_len = int(config.data.seq_len)
        self.num_classes = int(config.model.num_classes)
        self.label_smoothing = float(config.task.get("label_smoothing", 0.0))
        self._logits_fns: dict[int, Any] = {}

    def build_data(self):
        """Tokenized train loader and the whole test split (see fmjax.data.text_classification)."""
        from fmjax.data.text_classification import build_text_classification_data

        return build_text_classification_data(self.config)

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a batch of `batch_size` texts."""
        tokens = (batch_size, self.seq_len)
        return {
            "input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "token_type_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        }

    def example_losses(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Cross-entropy per example [B] (with label smoothing, when configured)."""
        targets = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        if self.label_smoothing > 0.0:
            targets = optax.smooth_labels(targets, self.label_smoothing)
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

    def loss_and_metrics(
        self, model: nnx.Module, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        """Mean cross-entropy over weighted texts, and (sum, count) loss and accuracy."""
        logits = model(
            batch["input_ids"],
            batch["attention_mask"],
            deterministic=deterministic,
            rngs=rngs,
            token_type_ids=batch["token_type_ids"],
        )
        labels, weights = batch["labels"], batch["weights"]
        loss_sum = jnp.sum(self.example_losses(logits, labels) * weights)
        count = jnp.sum(weights)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
        return loss_sum / jnp.maximum(count, 1.0), {
            "loss": (loss_sum, count),
            "accuracy": (correct, count),
        }

    # --- evaluation over the whole test split -------------------------------------------------

    def _logits_fn(self, program: Any) -> Any:
        """Jitted (params, batch) -> logits [B, C], replicated on every device."""
        key = id(program)
        if key not in self._logits_fns:

            def logits_fn(params, batch):
                model = nnx.merge(program.graphdef, params)
                return model(
                    batch["input_ids"],
                    batch["attention_mask"],
                    deterministic=True,
                    token_type_ids=batch["token_type_ids"],
                )

            self._logits_fns[key] = jax.jit(
                logits_fn,
                in_shardings=(program.state_shardings["params"], program.batch_sharding),
                out_shardings=NamedSharding(program.mesh, PartitionSpec()),
            )
        return self._logits_fns[key]

    def predict(self, program: Any, params: Any, held_out: Any) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, C] float32, labels [N]) of every real (weight 1) test example."""
        logits_fn = self._logits_fn(program)
        all_logits, all_labels = [], []
        for batch in held_out:
            count, index = jax.process_count(), jax.process_index()
            local = {k: np.array_split(v, count)[index] for k, v in batch.items()}
            logits = np.asarray(logits_fn(params, shard_batch(local, program.mesh)))
            real = batch["weights"] > 0
            all_logits.append(logits[real])
            all_labels.append(batch["labels"][real])
        return np.concatenate(all_logits), np.concatenate(all_labels)

    def evaluate(self, program: Any, params: Any, held_out: Any) -> dict[str, Any]:
        """Loss, accuracy, macro precision / recall / F1 and the confusion matrix (a list of
        rows, also printed) over the whole test split."""
        logits, labels = self.predict(program, params, held_out)
        matrix = confusion_matrix(labels, np.argmax(logits, axis=-1), self.num_classes)
        loss = float(np.mean(self.example_losses(jnp.asarray(logits), jnp.asarray(labels))))
        values: dict[str, Any] = {
            "loss": loss,
            **classification_metrics(matrix),
            "num_examples": float(len(labels)),
            "confusion_matrix": matrix.tolist(),
        }
        if jax.process_index() == 0:
            # tqdm.write keeps a running progress bar below the table
            tqdm.write(format_confusion_matrix(matrix, tuple(held_out.class_names)))
        return values

    def tokens_per_example(self) -> int:
        return self.seq_len

    def train_flops_per_example(self) -> float:
        """Model FLOPs of one training text (forward + backward = 3 x forward).

        Forward, counting 2 FLOPs per multiply-add and only matmuls (lookups, norms, softmax and
        the optimizer are ignored, as in the PaLM/MaxText MFU convention):
          per token and layer: 2 * (4 * d * h * k + 2 * d * f)   q, k, v, out projections; MLP
                               + 2 * 2 * L * h * k                 Q·Kᵀ and probs·V
          per text:            2 * d * d (with the pooler) + 2 * d * C
        with d = embed_dim, h = num_heads, k = head_dim, f = mlp_dim, L = seq_len, C = classes.
        """
        model = self.config.model
        d, h, k, f, length = (
            model.embed_dim,
            model.num_heads,
            model.head_dim,
            model.mlp_dim,
            self.seq_len,
        )
        per_token_layer = 2 * (4 * d * h * k + 2 * d * f) + 4 * length * h * k
        encoder = length * model.num_layers * per_token_layer
        head = (2 * d * d if model.get("pooler", False) else 0) + 2 * d * self.num_classes
        return 3.0 * (encoder + head)
