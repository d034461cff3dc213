"""Your own labeled texts for classification: `data.dataset=files:/path/train.csv`.

Formats by extension: .csv, .tsv (a header row names the columns) and .jsonl (one JSON object a
line). Fields: data.text_field, data.label_field, and data.text_pair_field for sentence pairs
('' for single texts). Labels may be strings or integers; the class names are the distinct train
labels, in numeric order when every label is an integer (so 0..C-1 keep their ids) and in
alphabetical order otherwise. They go into the provenance, so the confusion matrix and the model
card name them.

The held-out split is data.test_file (same format and fields) or, when that is '', a seeded
hash split of the train file: a row goes to test when sha256(seed, text, pair) falls below
data.test_fraction, so duplicates never straddle the split and the split does not depend on the
row order. Rows with an empty text or label, or a malformed line, are skipped and counted
(provenance "skipped_rows"); a missing column, an empty file or a test label that training never
saw is a ConfigError.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections import Counter
from typing import Any

from fmjax.data.corpora import sha256_file
from fmjax.errors import ConfigError

FILES_PREFIX = "files:"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
HASH_BUCKETS = 1_000_000


@dataclasses.dataclass
class LabeledRows:
    """The usable rows of one file, in file order, and how many were skipped (by reason)."""

    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    skipped: dict[str, int]


@dataclasses.dataclass
class LabeledSplits:
    """Train and test rows with label ids, the class names and their provenance."""

    train: tuple[list[str], list[str] | None, list[int]]
    test: tuple[list[str], list[str] | None, list[int]]
    class_names: tuple[str, ...]
    provenance: dict


def is_files_dataset(name: str) -> bool:
    """True for data.dataset values of the form files:/path/train.csv."""
    return str(name).startswith(FILES_PREFIX)


def _fields(config: Any) -> tuple[str, str, str]:
    data = config.data
    text_field = str(data.get("text_field", "text") or "")
    label_field = str(data.get("label_field", "label") or "")
    if not text_field or not label_field:
        raise ConfigError("data.text_field and data.label_field must name columns of your file")
    return text_field, label_field, str(data.get("text_pair_field", "") or "")


def _records(path: str, file_format: str, skipped: Counter):
    """(line number, dict) per row; malformed lines are counted in `skipped`."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        if file_format == "jsonl":
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    skipped["malformed line"] += 1
                    continue
                if not isinstance(record, dict):
                    skipped["malformed line"] += 1
                    continue
                yield number, record
            return
        reader = csv.DictReader(f, delimiter="," if file_format == "csv" else "\t")
        if reader.fieldnames is None:
            return
        yield 1, {"__header__": reader.fieldnames}
        for record in reader:
            if None in record or None in record.values():  # more or fewer cells than columns
                skipped["wrong number of columns"] += 1
                continue
            yield reader.line_num, record


def read_labeled_file(path: str, text_field: str, label_field: str, pair_field: str = ""):
    """The usable rows of a CSV / TSV / JSONL file (see the module docstring)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(
            f"labeled data file {path} does not exist; check data.dataset and data.test_file"
        )
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ConfigError(
            f"{path}: unknown extension {extension!r}; use one of {', '.join(sorted(FORMATS))}"
        )
    wanted = [field for field in (text_field, label_field, pair_field) if field]
    skipped: Counter = Counter()
    texts, pairs, labels = [], [], []
    for _, record in _records(path, FORMATS[extension], skipped):
        if "__header__" in record:
            missing = [field for field in wanted if field not in record["__header__"]]
            if missing:
                raise ConfigError(
                    f"{path} has no column {missing[0]!r} (columns: "
                    f"{', '.join(record['__header__'])}); set data.text_field / label_field / "
                    "text_pair_field"
                )
            continue
        values = [record.get(field) for field in wanted]
        if any(value is None for value in values) and FORMATS[extension] == "jsonl":
            skipped[f"no field {wanted[values.index(None)]!r}"] += 1
            continue
        text = str(record[text_field]).strip()
        label = record[label_field]
        label = "" if label is None else str(label).strip()
        pair = str(record[pair_field]).strip() if pair_field else ""
        if not text or (pair_field and not pair):
            skipped["empty text"] += 1
            continue
        if not label:
            skipped["empty label"] += 1
            continue
        texts.append(text)
        pairs.append(pair)
        labels.append(label)
    if not texts:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        raise ConfigError(
            f"{path} holds no usable row ({reasons or 'empty file'}); it needs a "
            f"{text_field!r} and a {label_field!r} value per row"
        )
    return LabeledRows(path, texts, pairs if pair_field else None, labels, dict(skipped))


def class_names_of(labels: list[str]) -> tuple[str, ...]:
    """The distinct labels: numeric order if all are integers, alphabetical otherwise."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def _in_test(seed: int, text: str, pair: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}\0{text}\0{pair}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS < fraction * HASH_BUCKETS


def _select(rows: LabeledRows, keep: list[bool]):
    texts = [t for t, k in zip(rows.texts, keep, strict=True) if k]
    pairs = None if rows.pairs is None else [p for p, k in zip(rows.pairs, keep, strict=True) if k]
    labels = [label for label, k in zip(rows.labels, keep, strict=True) if k]
    return texts, pairs, labels


def read_labeled_splits(config: Any) -> LabeledSplits:
    """Train and test texts with label ids of a files: dataset, and their provenance."""
    train_path = str(config.data.dataset)[len(FILES_PREFIX) :]
    text_field, label_field, pair_field = _fields(config)
    train_rows = read_labeled_file(train_path, text_field, label_field, pair_field)
    test_path = str(config.data.get("test_file", "") or "")
    if test_path:
        test_rows = read_labeled_file(test_path, text_field, label_field, pair_field)
        train = (train_rows.texts, train_rows.pairs, train_rows.labels)
        test = (test_rows.texts, test_rows.pairs, test_rows.labels)
        split = {"test_file": test_rows.path, "test_sha256": sha256_file(test_rows.path)}
        skipped = {"train": train_rows.skipped, "test": test_rows.skipped}
    else:
        fraction = float(config.data.get("test_fraction", 0.1))
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.test_fraction={fraction} must be in (0, 1), or set test_file")
        pairs = train_rows.pairs or [""] * len(train_rows.texts)
        in_test = [
            _in_test(int(config.seed), text, pair, fraction)
            for text, pair in zip(train_rows.texts, pairs, strict=True)
        ]
        test = _select(train_rows, in_test)
        train = _select(train_rows, [not t for t in in_test])
        split = {"test_fraction": fraction, "hash_seed": int(config.seed)}
        skipped = {"train": train_rows.skipped}
        if not train[0] or not test[0]:
            raise ConfigError(
                f"{train_rows.path}: the hash split at data.test_fraction={fraction} left "
                f"{len(train[0])} train / {len(test[0])} test rows; add rows or set data.test_file"
            )
    class_names = class_names_of(train[2])
    index = {name: i for i, name in enumerate(class_names)}
    unseen = sorted(set(test[2]) - set(index))
    if unseen:
        raise ConfigError(
            f"test label {unseen[0]!r} never occurs in the train rows of {train_rows.path} "
            f"(train labels: {', '.join(class_names[:10])}); add train examples of it or drop it"
        )
    provenance = {
        "dataset": str(config.data.dataset),
        "train_file": train_rows.path,
        "train_sha256": sha256_file(train_rows.path),
        **split,
        "fields": {"text": text_field, "label": label_field, "text_pair": pair_field},
        "skipped_rows": skipped,
        "num_train_examples": len(train[0]),
        "num_test_examples": len(test[0]),
        "class_names": list(class_names),
        "class_counts_train": dict(Counter(train[2])),
    }
    return LabeledSplits(
        train=(train[0], train[1], [index[label] for label in train[2]]),
        test=(test[0], test[1], [index[label] for label in test[2]]),
        class_names=class_names,
        provenance=provenance,
    )
