"""Deterministic grain input pipeline: batches are a pure function of (seed, step), per process."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from fmjax.errors import ConfigError

Transform = Callable[[Any, np.random.Generator], dict[str, np.ndarray]]
PREFETCH_BATCHES = 4


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The rng of the example at global stream position `index` (same for any process count)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


class Loader:
    """Batches as a pure function of (seed, step), sharded per process."""

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
    ):
        """dataset: the shuffled, repeated, transformed stream of examples."""
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = global_batch_size // process_count

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step` (a contiguous block of B/P rows)."""
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        return _stack([self.dataset[i] for i in range(start, start + self.local_batch_size)])

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """batch(start_step), batch(start_step + 1), ... prepared by a background thread."""
        out: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def produce() -> None:
            step = start_step
            try:
                while not stop.is_set():
                    item = (step, self.batch(step), None)
                    while not stop.is_set():
                        try:
                            out.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    step += 1
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                out.put((step, None, e))

        thread = threading.Thread(target=produce, daemon=True, name="fmjax-prefetch")
        thread.start()
        try:
            while True:
                _, batch, error = out.get()
                if error is not None:
                    raise error
                yield batch
        finally:
            stop.set()
            thread.join(timeout=5)

    def get_state(self, step: int) -> dict[str, int]:
        """The whole iterator state: the next step (data order is a pure function of it)."""
        return {"step": int(step)}


def make_loader(
    source: Any,
    transform: Transform,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
) -> Loader:
    """Loader over an epoch-reshuffled, repeated `source` with per-example seeded transforms.

    It reads block `process_index` of `process_count` of each global batch; by default this
    process's block on the current mesh (fmjax.parallel.mesh.process_batch_block).
    """
    if process_index is None or process_count is None:
        from fmjax.parallel.mesh import process_batch_block

        process_index, process_count = process_batch_block()
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ConfigError(
            f"global batch size {global_batch_size} is not divisible by the {process_count} "
            f"processes; set train.batch_size to a multiple of {process_count}"
        )
    if len(source) == 0:
        raise ConfigError("the training data is empty; check data.corpus and data.seq_len")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=int(seed) & 0xFFFFFFFF)
    dataset = dataset.repeat()  # shuffle before repeat: each epoch gets its own permutation
    dataset = dataset.map_with_index(lambda i, x: transform(x, example_rng(seed, i)))
    return Loader(
        dataset,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )


def fixed_batches(
    source: Any, transform: Transform, *, batch_size: int, num_batches: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Eval batches: the first num_batches*batch_size examples in order (wrapping), seeded."""
    if len(source) == 0:
        raise ConfigError("the evaluation data is empty; check data.corpus and data.seq_len")
    dataset = grain.MapDataset.source(source).repeat()
    dataset = dataset.map_with_index(lambda i, x: transform(x, example_rng(seed, i)))
    return [
        _stack([dataset[b * batch_size + j] for j in range(batch_size)]) for b in range(num_batches)
    ]
