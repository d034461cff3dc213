"""Packed text examples in ArrayRecord shards: the writer and the loader's random-access source.

The interface between preparation (fmjax/data/preparation.py) and the loader
(fmjax/data/pipeline.py): a prepared split is a `PackedTextSource`, a grain-compatible
random-access data source:

- `len(source)`: the number of packed examples of the split (over all its shards, in shard order);
- `source[i]`: example i as a dict of int32 numpy arrays, e.g. {"input_ids": [L]} (masked-LM
  layout) or {"input_ids": [L], "segment_ids": [L]} (causal-LM layout);
- picklable (grain worker processes reopen it) and cheap to open: the row counts come from the
  dataset's record, so no shard is opened until it is read, and a process reads only the rows
  it indexes (each host of a multi-host job reads its own rows from shards every host sees).

The loader indexes it by (seed, step) like any grain source. A record is the example's features
laid end to end as little-endian integers of the dtypes named in the dataset's record (uint16 when
the vocabulary fits, so a token costs 2 bytes on disk). Shards are written with group_size:1 so
that a random read decodes one record.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Sequence

import numpy as np
from array_record.python import array_record_module

from fmjax.data.corpora import sha256_file

WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = "readahead_buffer_size:0"  # random access: read only the records asked for
# name -> (numpy dtype name, shape): the record's layout, in this order
Features = dict[str, tuple[str, tuple[int, ...]]]


def encode_example(example: dict[str, np.ndarray], features: Features) -> bytes:
    """One record's bytes: each feature, in the order of `features`, as its stored dtype."""
    parts = []
    for name, (dtype, shape) in features.items():
        value = np.asarray(example[name])
        if value.shape != tuple(shape):
            raise ValueError(f"feature {name} has shape {value.shape}, expected {tuple(shape)}")
        parts.append(value.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
    return b"".join(parts)


# (name, little-endian dtype, element count, shape) per feature: what a record is laid out as
Layout = list[tuple[str, np.dtype, int, tuple[int, ...]]]


def record_layout(features: Features) -> Layout:
    """The per-feature layout decode_example reads (computed once per source, not per record)."""
    return [
        (name, np.dtype(dtype).newbyteorder("<"), int(np.prod(shape)), tuple(shape))
        for name, (dtype, shape) in features.items()
    ]


def decode_example(record: bytes, layout: Layout) -> dict[str, np.ndarray]:
    """The example (int32 arrays) a record's bytes hold."""
    out, offset = {}, 0
    for name, dtype, count, shape in layout:
        value = np.frombuffer(record, dtype=dtype, count=count, offset=offset)
        out[name] = value.astype(np.int32).reshape(shape)
        offset += count * dtype.itemsize
    return out


class ShardWriter:
    """Writes one shard under a temporary name; `close` renames it into place atomically.

    A shard is a pure function of the examples written, so two processes writing the same
    shard (a re-run beside a leftover worker) produce the same bytes and either rename wins.
    """

    def __init__(self, path: str, features: Features):
        """path: the shard's final name; features: the record layout."""
        self.path = path
        self.features = features
        self.rows = 0
        self._tmp = f"{path}.tmp-{os.getpid()}"
        self._writer = None

    def write(self, example: dict[str, np.ndarray]) -> None:
        """Appends one example."""
        if self._writer is None:  # opened on the first row: an empty shard writes no file
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
        self._writer.write(encode_example(example, self.features))
        self.rows += 1

    def close(self) -> dict:
        """Finishes the shard: {"file", "rows", "sha256"} ("file" is None for an empty shard)."""
        if self._writer is None:
            return {"file": None, "rows": 0, "sha256": None}
        self._writer.close()
        self._writer = None
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(self._tmp)
        os.replace(self._tmp, self.path)
        return {"file": os.path.basename(self.path), "rows": self.rows, "sha256": digest}


class PackedTextSource:
    """A prepared split as a grain random-access source (see the module docstring)."""

    def __init__(self, directory: str, shards: Sequence[dict], features: Features):
        """directory: where the shards are; shards: [{"file", "rows"}, ...] in order."""
        self.features = {name: (dtype, tuple(shape)) for name, (dtype, shape) in features.items()}
        self.shards = [dict(s) for s in shards if s["rows"]]
        self._num_rows = sum(int(s["rows"]) for s in self.shards)
        self._layout = record_layout(self.features)
        self._directory = directory
        self._ends = list(itertools.accumulate(int(s["rows"]) for s in self.shards))  # 1 + last row
        self._readers = None  # opened on first read of each shard (again in each worker)

    def __len__(self) -> int:
        return self._num_rows

    def _reader(self, shard: int) -> array_record_module.ArrayRecordReader:
        if self._readers is None:
            self._readers = [None] * len(self.shards)
        if self._readers[shard] is None:
            path = os.path.join(self._directory, self.shards[shard]["file"])
            self._readers[shard] = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
        return self._readers[shard]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._num_rows:
            raise IndexError(f"row {index} out of range [0, {self._num_rows})")
        shard = bisect.bisect_right(self._ends, index)
        position = index - (self._ends[shard - 1] if shard else 0)
        # A range read: ArrayRecord's read([position]) takes its parallel path, ~40x slower.
        (record,) = self._reader(shard).read(position, position + 1)
        return decode_example(record, self._layout)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._num_rows):
            raise IndexError(f"rows out of range [0, {self._num_rows})")
        shards = np.searchsorted(self._ends, indices, side="right")
        positions = indices - np.concatenate([[0], self._ends])[shards]
        records: list = [None] * len(shards)
        for shard in np.unique(shards):
            rows = np.flatnonzero(shards == shard)
            read = self._reader(int(shard)).read([int(p) for p in positions[rows]])
            for row, record in zip(rows, read, strict=True):
                records[row] = record
        return [decode_example(r, self._layout) for r in records]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = None
        return state

    def __repr__(self) -> str:
        return f"PackedTextSource({self._directory}, {len(self.shards)} shards, {len(self)} rows)"
