"""Deterministic grain input pipeline: batches are a pure function of (seed, step), per process.

The examples are a grain MapDataset: the source, shuffled anew each epoch, repeated, transformed
with a per-example rng (`example_rng(seed, stream position)`). Global batch `step` is stream
positions [step * B, (step + 1) * B); each process reads only its rows of it (`process_batches`).
`Loader.iterate` turns the step-indexed batches into grain's IterDataset: a thread pool reads
(ReadOptions) and, with `worker_count` > 0, grain worker processes (`mp_prefetch`) decode,
augment and batch in parallel. Each batch is computed from its step alone, so the batches are the
same with any worker count, and resuming at step s only needs s (the checkpointed data state).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from fmjax.errors import ConfigError

Transform = Callable[[Any, np.random.Generator], dict[str, np.ndarray]]
# (this process's stacked rows of a batch, their global stream positions) -> the batch
BatchTransform = Callable[[Any, np.ndarray], dict[str, np.ndarray]]
DEFAULT_WORKER_COUNT = 0  # measured on 2 cores (README "Input pipeline"): workers only pay off
DEFAULT_READ_THREADS = 1  # with spare cores, e.g. for JPEG decoding
DEFAULT_PREFETCH_BUFFER = 4  # batches read ahead of the train step, per worker


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The rng of the example at global stream position `index` (same for any process count).

    Position step * global_batch_size + row: a pure function of (seed, step, row), so every
    crop, flip and mask is the same with any worker or process count.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])


_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(_SPLITMIX_GAMMA)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def position_uniforms(seed: int, positions: np.ndarray, width: int, stream: int) -> np.ndarray:
    """float64 [len(positions), width] in [0, 1): a hash of (seed, stream, position, column).

    The batch-level counterpart of example_rng: a row's draws depend only on the seed and its
    global stream position, so a vectorized batch transform is as deterministic as a
    per-example one, with any worker or process count.
    """
    key = _splitmix64(np.asarray([(int(seed) & 0xFFFFFFFF) | (int(stream) << 32)], np.uint64))
    rows = _splitmix64(key + np.asarray(positions, np.uint64)[:, None])
    bits = _splitmix64(rows + np.arange(width, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _stack(examples: list[Any]) -> Any:
    if not isinstance(examples[0], dict):
        return np.stack(examples)
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


class MemmapRows:
    """A memory-mapped .npy array as a grain source that pickles as its path, not its data.

    grain sends the pipeline to worker processes by pickling it; a plain np.memmap would be
    copied whole into every worker.
    """

    def __init__(self, array: np.memmap):
        self._spec = (array.filename, array.dtype, array.offset, array.shape, _order(array))
        self._array = array

    def __len__(self) -> int:
        return self._array.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self._array[index])

    def __getstate__(self) -> tuple:
        return self._spec

    def __setstate__(self, spec: tuple) -> None:
        filename, dtype, offset, shape, order = spec
        self._spec = spec
        self._array = np.memmap(filename, dtype, "r", offset=offset, shape=shape, order=order)


def _order(array: np.ndarray) -> str:
    return "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"


def as_grain_source(source: Any) -> Any:
    """`source` ready to be sent to grain workers (a memory-mapped array by its path)."""
    if isinstance(source, np.memmap) and isinstance(source.base, mmap.mmap):  # not a view
        return MemmapRows(source)
    return source


def process_batches(
    examples: grain.MapDataset,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    batch_transform: BatchTransform | None = None,
) -> grain.MapDataset:
    """Element `step`: this process's rows of global batch `step` (the one place rows are chosen).

    Process p reads the p-th contiguous block of B/P rows, the block its devices hold
    (fmjax.parallel.mesh.check_batch_rows_per_process), so together the processes read every
    example once per epoch.
    """
    local_batch_size = global_batch_size // process_count
    # block k: rows [k*b, (k+1)*b). drop_remainder: grain counts the blocks of the endless stream
    # (sys.maxsize rows) as ceil(float(len) / b), which passes sys.maxsize when b == 1.
    blocks = examples.batch(local_batch_size, drop_remainder=True, batch_fn=_stack)
    if batch_transform is not None:
        blocks = blocks.map_with_index(
            lambda k, rows: batch_transform(
                rows, np.arange(k * local_batch_size, (k + 1) * local_batch_size)
            )
        )
    return blocks[process_index::process_count]


class Loader:
    """Batches as a pure function of (seed, step), sharded per process, read by grain."""

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        worker_count: int = DEFAULT_WORKER_COUNT,
        read_threads: int = DEFAULT_READ_THREADS,
        prefetch_buffer: int = DEFAULT_PREFETCH_BUFFER,
        batch_transform: BatchTransform | None = None,
    ):
        """dataset: the shuffled, repeated, transformed stream of examples."""
        self.global_batch_size = global_batch_size
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = global_batch_size // process_count
        self.worker_count = worker_count
        self.read_threads = read_threads
        self.prefetch_buffer = prefetch_buffer
        self.batches = process_batches(
            dataset, global_batch_size, process_index, process_count, batch_transform
        )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`, computed here and now."""
        return self.batches[step]

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """batch(start_step), batch(start_step + 1), ... read ahead by grain threads / workers."""
        options = grain.ReadOptions(
            num_threads=self.read_threads, prefetch_buffer_size=self.prefetch_buffer
        )
        dataset = self.batches[start_step:].to_iter_dataset(options)
        if self.worker_count > 0:
            _mark_flags_parsed()
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.worker_count, per_worker_buffer_size=self.prefetch_buffer
                )
            )
        iterator = iter(dataset)
        try:
            for batch in iterator:
                # Workers hand over shared-memory arrays: copy them out so the segments are freed.
                yield {key: np.array(value) for key, value in batch.items()}
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # stops the worker processes now, not whenever the iterator is collected

    def get_state(self, step: int) -> dict[str, int]:
        """The whole iterator state: the next step (data order is a pure function of it)."""
        return {"step": int(step)}


def _mark_flags_parsed() -> None:
    # grain reads absl flags when it starts workers; outside an absl app (tests, benchmarks, a
    # notebook) they are unparsed and reading them raises, so take their defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def loader_options(config: Any) -> dict[str, int]:
    """worker_count, read_threads and prefetch_buffer from config.data, checked."""
    data = config.data
    options = {
        "worker_count": int(data.get("worker_count", DEFAULT_WORKER_COUNT)),
        "read_threads": int(data.get("read_threads", DEFAULT_READ_THREADS)),
        "prefetch_buffer": int(data.get("prefetch_buffer", DEFAULT_PREFETCH_BUFFER)),
    }
    minimums = {"worker_count": 0, "read_threads": 1, "prefetch_buffer": 1}
    for name, value in options.items():
        if value < minimums[name]:
            raise ConfigError(f"data.{name}={value}; set it to {minimums[name]} or more")
    return options


def make_loader(
    source: Any,
    transform: Transform | None,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
    worker_count: int = DEFAULT_WORKER_COUNT,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_buffer: int = DEFAULT_PREFETCH_BUFFER,
    batch_transform: BatchTransform | None = None,
) -> Loader:
    """Loader over an epoch-reshuffled, repeated `source` with per-example seeded transforms.

    transform(example, example_rng) runs per example (None: the examples as they are);
    batch_transform(stacked rows, stream positions), if given, then runs per batch, for
    transforms that vectorize (MLM masking draws from position_uniforms).

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
    dataset = grain.MapDataset.source(as_grain_source(source))
    if shuffle:
        dataset = dataset.shuffle(seed=int(seed) & 0xFFFFFFFF)
    dataset = dataset.repeat()  # shuffle before repeat: each epoch gets its own permutation
    if transform is not None:
        dataset = dataset.map_with_index(lambda i, x: transform(x, example_rng(seed, i)))
    return Loader(
        dataset,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        read_threads=read_threads,
        prefetch_buffer=prefetch_buffer,
        batch_transform=batch_transform,
    )


def fixed_batches(
    source: Any, transform: Transform, *, batch_size: int, num_batches: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Eval batches: the first num_batches*batch_size examples in order (wrapping), seeded."""
    if len(source) == 0:
        raise ConfigError("the evaluation data is empty; check data.corpus and data.seq_len")
    dataset = grain.MapDataset.source(source).repeat()
    dataset = dataset.map_with_index(lambda i, x: transform(x, example_rng(seed, i)))
    batches = dataset.batch(batch_size, drop_remainder=True, batch_fn=_stack)  # as process_batches
    return [batches[b] for b in range(num_batches)]
