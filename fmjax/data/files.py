"""The user's own files as documents: `files:<glob>` of .txt, .jsonl, .jsonl.gz and .parquet.

A document is one record's text field (.jsonl, .jsonl.gz, .parquet: `data.text_field`) or one
whole .txt file, cut at line boundaries into pieces of at most MAX_DOCUMENT_CHARS so that memory
stays bounded for any file size. Files are read as streams, one record at a time. A record that
cannot be decoded (bad UTF-8, bad JSON, a non-string text) is skipped and counted in
`ReadStats`; a file that cannot be opened or read, a missing text field, a missing or empty glob
are ConfigErrors of one line.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator

from fmjax.errors import ConfigError

FILES_PREFIX = "files:"
SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
MAX_DOCUMENT_CHARS = 1 << 20  # a .txt document is cut (at a line end) beyond this many chars
PARQUET_BATCH_ROWS = 1024


@dataclasses.dataclass
class ReadStats:
    """Counts of what reading skipped (reported in the log and the prepared dataset's record).

    position: how many bytes of the current file (on disk, compressed or not) were read.
    """

    skipped_records: int = 0
    position: int = 0

    def add(self, other: ReadStats) -> None:
        """Adds another reader's counts."""
        self.skipped_records += other.skipped_records


def is_files_corpus(corpus: str) -> bool:
    """Whether data.corpus names the user's own files (files:<glob>)."""
    return str(corpus).startswith(FILES_PREFIX)


def list_files(pattern: str, field: str = "data.corpus") -> list[str]:
    """The sorted files a glob matches (`**` recurses); ConfigError if none or of unknown type."""
    pattern = os.path.expanduser(
        pattern[len(FILES_PREFIX) :] if is_files_corpus(pattern) else pattern
    )
    if not pattern:
        raise ConfigError(f"{field} has an empty glob; use e.g. files:/data/shards/*.jsonl.gz")
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise ConfigError(f"{field}: no files match {pattern!r}; check the path and the glob")
    unknown = [p for p in paths if not p.endswith(SUFFIXES)]
    if unknown:
        raise ConfigError(
            f"{field}: {unknown[0]} is not one of {', '.join(SUFFIXES)} "
            f"({len(unknown)} such files); narrow the glob to supported files"
        )
    return paths


def file_record(path: str) -> dict:
    """What a prepared dataset records of a source file: path, size and mtime."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_documents(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    """The documents of one file, in file order (see the module docstring)."""
    try:
        if path.endswith(".parquet"):
            yield from _read_parquet(path, text_field, stats)
        elif path.endswith(".txt"):
            yield from _read_txt(path, stats)
        else:
            yield from _read_jsonl(path, text_field, stats)
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read {path}: {type(e).__name__}: {e}; fix or remove it") from e


def _read_txt(path: str, stats: ReadStats) -> Iterator[str]:
    piece: list[str] = []
    size = 0
    with open(path, "rb") as f:
        for raw in f:
            stats.position = f.tell()
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.skipped_records += 1
                continue
            piece.append(line)
            size += len(line)
            if size >= MAX_DOCUMENT_CHARS:
                yield "".join(piece)
                piece, size = [], 0
    if piece:
        yield "".join(piece)


def _read_jsonl(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    with open(path, "rb") as disk:
        f = gzip.GzipFile(fileobj=disk) if path.endswith(".gz") else disk
        for number, raw in enumerate(f, start=1):
            stats.position = disk.tell()
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                stats.skipped_records += 1
                continue
            if not isinstance(record, dict) or text_field not in record:
                fields = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ConfigError(
                    f"{path}:{number} has no text field {text_field!r} (it has {fields}); "
                    "set --config.data.text_field"
                )
            text = record[text_field]
            if not isinstance(text, str):
                stats.skipped_records += 1
                continue
            yield text


def _read_parquet(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    import pyarrow
    import pyarrow.parquet as parquet

    try:
        parquet_file = parquet.ParquetFile(path)
    except pyarrow.ArrowException as e:
        raise ConfigError(f"cannot read {path}: {e}; fix or remove it") from e
    columns = parquet_file.schema_arrow.names
    if text_field not in columns:
        raise ConfigError(
            f"{path} has no text column {text_field!r} (it has {columns}); "
            "set --config.data.text_field"
        )
    total_rows = max(1, parquet_file.metadata.num_rows)
    rows = 0
    size = os.path.getsize(path)
    try:
        for batch in parquet_file.iter_batches(PARQUET_BATCH_ROWS, columns=[text_field]):
            rows += batch.num_rows
            stats.position = size * rows // total_rows
            for text in batch.column(0).to_pylist():
                if isinstance(text, bytes):
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError:
                        text = None
                if not isinstance(text, str):
                    stats.skipped_records += 1
                    continue
                yield text
    except pyarrow.ArrowException as e:
        raise ConfigError(f"cannot read {path}: {e}; fix or remove it") from e
