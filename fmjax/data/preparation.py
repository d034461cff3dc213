"""Streaming, sharded, resumable text preparation: documents -> tokenizer -> ArrayRecord shards.

The corpus is cut into *units* (a run of input files, or a range of a TFDS split's documents);
each unit is read as a stream, tokenized and packed into its own shard per split, so memory does
not grow with the corpus and units run in parallel worker processes (every core). A shard is a
pure function of its unit, the tokenizer and the packer: it is written under a temporary name
and renamed into place, and a small marker records it as done. A re-run after a kill keeps the
done units and redoes the rest, so it ends with the same shards (same sha256) as an
uninterrupted run; a lock keeps two preparations of one dataset from interleaving. The
dataset's record (`prepared.json`, written last and atomically) lists the shards and what they
came from (source files with sizes and mtimes, or the TFDS dataset; tokenizer sha256; packer
version); training start and resume read only that record, never the corpus.

Layouts: "mlm" (BERT: WordPiece, sentences packed per document with [CLS]/[SEP]; feature
input_ids [L]) and "clm" (GPT: byte-level BPE, documents framed by <|endoftext|> and packed
across documents; features input_ids, segment_ids [L]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tqdm

from fmjax.data import files as files_lib
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import one_process_at_a_time, sha256_file
from fmjax.data.pipeline import fixed_batches, loader_options, make_loader
from fmjax.data.shards import Features, PackedTextSource, ShardWriter
from fmjax.data.task_data import TaskData
from fmjax.data.text import DocumentPacker, SentencePacker
from fmjax.errors import ConfigError

PACKER_VERSION = 1  # bump when a change to reading, tokenizing or packing changes the shards
RECORD_FILE = "prepared.json"
SPLITS = ("train", "validation")
UNIT_BYTES = 64 << 20  # input bytes per unit of a files corpus (one shard per split each)
UNIT_DOCUMENTS = 4096  # documents per unit of a TFDS corpus
ENCODE_CHARS = 1 << 18  # characters tokenized per encode_batch call (bounds memory)
DEFAULT_TOKENIZER_SAMPLE_BYTES = 64_000_000  # as in fmjax.config.text_corpus_fields
SAMPLE_UNITS = 64  # the tokenizer sample is spread over (at most) this many units

LAYOUTS = {
    "mlm": {"tokenizer_kind": "wordpiece", "tokenizer_prefix": "wordpiece", "short": "wp"},
    "clm": {"tokenizer_kind": "byte_bpe", "tokenizer_prefix": "byte-bpe", "short": "bpe"},
}


@dataclasses.dataclass(frozen=True)
class Unit:
    """A slice of the corpus prepared as one shard per split.

    split: "train" / "validation", or "" when each document's split comes from its hash.
    files: the input files (files corpora); tfds_split, start, end: a document range (TFDS).
    """

    index: int
    split: str
    size: int  # bytes (files) or documents (TFDS): the progress bar's unit
    files: tuple[str, ...] = ()
    tfds_split: str = ""
    start: int = 0
    end: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the workers need, picklable: how to read, tokenize and pack every unit."""

    layout: str
    seq_len: int
    directory: str  # the prepared dataset's folder
    tokenizer_path: str
    reader: dict  # {"kind": "files", "text_field", "validation_fraction"} or {"kind": "tfds", ...}
    units: tuple[Unit, ...]
    features: dict
    tokenizer_given: bool = False  # the model's own tokenizer (else one trained on the corpus)


@dataclasses.dataclass
class PreparedText:
    """A prepared dataset: its tokenizer, one random-access source per split, its record."""

    tokenizer: Any
    vocab_size: int
    sources: dict[str, PackedTextSource]
    provenance: dict

    def task_data(
        self, config: Any, batch_transform: Callable, eval_transform: Callable, eval_seed: int
    ) -> TaskData:
        """The TaskData of these splits: the train loader (`batch_transform` of each global
        batch's rows) and data.eval_batches fixed validation batches (`eval_transform` of each
        row, drawn with `eval_seed`)."""
        batch_size = int(config.train.batch_size)
        train = make_loader(
            self.sources["train"],
            None,
            batch_transform=batch_transform,
            global_batch_size=batch_size,
            seed=int(config.seed),
            **loader_options(config),
        )
        eval_batches = fixed_batches(
            self.sources["validation"],
            eval_transform,
            batch_size=batch_size,
            num_batches=int(config.train.eval_batches),
            seed=eval_seed,
        )
        provenance = {**self.provenance, "seq_len": int(config.data.seq_len)}
        return TaskData(train, eval_batches, provenance, tokenizer=self.tokenizer)


# ----------------------------------------------------------------- config -> where and what


def corpus_dir_name(corpus: str) -> str:
    """A folder name for a corpus name (tfds:wikipedia -> tfds_wikipedia)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus)


def corpus_dir(config: Any) -> str:
    """<data_dir>/<corpus>: where a corpus's tokenizers and prepared datasets live."""
    corpus = str(config.data.corpus)
    name = corpus_dir_name(corpus)
    if files_lib.is_files_corpus(corpus):  # globs are long and may collide once sanitized
        name = f"files_{hashlib.sha256(corpus.encode()).hexdigest()[:12]}"
    return os.path.join(os.path.expanduser(str(config.data.data_dir)), name)


def tokenizer_path(config: Any, layout: str) -> str:
    """The layout's tokenizer: the model's own (tokenizer_lib.pretrained_tokenizer_path), else
    where the one trained on the configured corpus at model.vocab_size is (or goes)."""
    given = tokenizer_lib.pretrained_tokenizer_path(config)
    if given:
        return given
    prefix = LAYOUTS[layout]["tokenizer_prefix"]
    return os.path.join(corpus_dir(config), f"{prefix}-{int(config.model.vocab_size)}.json")


def dataset_dir(config: Any, layout: str) -> str:
    """The prepared dataset's folder: one per corpus, layout, seq_len, tokenizer and split rule."""
    seq_len, vocab = int(config.data.seq_len), int(config.model.vocab_size)
    name = f"{layout}-seq{seq_len}-{LAYOUTS[layout]['short']}{vocab}"
    given = tokenizer_lib.pretrained_tokenizer_path(config)
    if given:  # the model's own tokenizer (any special ids): never retrained
        name += f"-tokenizer{sha256_file(given)[:12]}"
    if files_lib.is_files_corpus(str(config.data.corpus)):
        rule = [str(config.data.get("validation_files", "") or "")]
        rule += [float(config.data.get("validation_fraction", 0.01))]
        rule += [str(config.data.get("text_field", "text"))]
        name += "-" + hashlib.sha256(json.dumps(rule).encode()).hexdigest()[:8]
    return os.path.join(corpus_dir(config), name)


def _features(layout: str, seq_len: int, vocab_size: int) -> Features:
    token_dtype = "uint16" if vocab_size <= 1 << 16 else "int32"
    features = {"input_ids": (token_dtype, (seq_len,))}
    if layout == "clm":
        features["segment_ids"] = ("uint16" if seq_len < 1 << 16 else "int32", (seq_len,))
    return features


# ----------------------------------------------------------------- the entry point


def prepare_text(config: Any, layout: str, *, workers: int | None = None) -> PreparedText:
    """The prepared dataset of config.data for a layout ("mlm" | "clm"): read, or prepared now.

    A complete dataset is opened from its record alone. Otherwise the tokenizer is trained (once,
    on a bounded sample) and the missing shards are prepared by `workers` processes
    (data.prepare_workers; 0 = every core), resuming what an earlier run finished.
    """
    directory = dataset_dir(config, layout)
    record = _read_record(directory)
    if record is None:
        with one_process_at_a_time(directory):
            record = _read_record(directory)  # another process may have finished meanwhile
            if record is None:
                plan, provenance = make_plan(config, layout)
                remove_partial_files(plan)
                beam_options = str(config.data.get("beam_pipeline_options", "") or "")
                if beam_options:
                    from fmjax.data.beam_preparation import run_units_with_beam

                    results = run_units_with_beam(plan, beam_options)
                else:
                    if workers is None:
                        workers = int(config.data.get("prepare_workers", 0) or 0)
                    results = run_units(plan, workers or available_cores())
                record = write_record(plan, provenance, results)
    else:
        check_sources(config, record)
    vocab = int(config.model.vocab_size)
    return open_prepared(record, directory, vocab, tokenizer_path(config, layout))


def remove_partial_files(plan: Plan) -> None:
    """Deletes the temporary files of a killed run (their units are redone)."""
    for folder in ("shards", "progress"):
        for leftover in glob.glob(os.path.join(plan.directory, folder, "*.tmp-*")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read_record(directory: str) -> dict | None:
    path = os.path.join(directory, RECORD_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("packer_version") != PACKER_VERSION:
        raise ConfigError(
            f"{directory} was prepared by packer version {record.get('packer_version')}, this "
            f"fmjax packs with version {PACKER_VERSION}; delete the folder to prepare it again"
        )
    return record


def check_sources(config: Any, record: dict) -> None:
    """ConfigError if the files a dataset was prepared from changed (stat only, no reading)."""
    recorded = record["sources"].get("files")
    if recorded is None:
        return
    current = _source_files(config)
    if [f["path"] for f in current] != [f["path"] for f in recorded] or current != recorded:
        changed = next(
            (a["path"] for a, b in zip(current, recorded, strict=False) if a != b),
            "the list of files",
        )
        raise ConfigError(
            f"the corpus files changed since {record['directory']} was prepared ({changed}); "
            "delete that folder to prepare them again, or restore the files"
        )


def open_prepared(record: dict, directory: str, target_vocab: int, path: str) -> PreparedText:
    """The tokenizer (at `path`, today's location of the recorded one) and per-split sources of
    a prepared dataset, from its record."""
    if not os.path.exists(path):
        raise ConfigError(
            f"tokenizer {path} of {directory} is missing; delete the folder to redo it"
        )
    if sha256_file(path) != record["tokenizer"]["sha256"]:
        raise ConfigError(
            f"tokenizer {path} is not the one {directory} was prepared with; restore it or "
            "delete the folder to prepare again"
        )
    tokenizer_info = {**record["tokenizer"], "path": path}  # a given file may have moved
    tokenizer = _load_tokenizer(record["layout"], path, bool(tokenizer_info.get("given")))
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > target_vocab:
        raise ConfigError(
            f"tokenizer {path} has {vocab_size} tokens > model.vocab_size="
            f"{target_vocab}; raise model.vocab_size to {vocab_size} or delete the tokenizer file"
        )
    features = {k: (v[0], tuple(v[1])) for k, v in record["features"].items()}
    sources = {
        split: PackedTextSource(
            os.path.join(directory, "shards"), record["splits"][split]["shards"], features
        )
        for split in SPLITS
    }
    provenance = {
        **record["corpus"],
        "tokenizer": tokenizer_info,
        "num_train_sequences": len(sources["train"]),
        "num_eval_sequences": len(sources["validation"]),
        "prepared": {
            "directory": directory,
            "packer_version": record["packer_version"],
            "num_shards": {s: len(record["splits"][s]["shards"]) for s in SPLITS},
            "num_documents": record["num_documents"],
            "num_tokens": record["num_tokens"],
            "skipped_records": record["skipped_records"],
        },
    }
    return PreparedText(tokenizer, vocab_size, sources, provenance)


def _load_tokenizer(layout: str, path: str, given: bool):
    if given:  # the model's own: whatever its special ids
        return tokenizer_lib.load_tokenizer_file(path)
    train = (
        tokenizer_lib.train_or_load_wordpiece
        if layout == "mlm"
        else tokenizer_lib.train_or_load_byte_bpe
    )
    return train([], 0, path)


# ----------------------------------------------------------------- planning


def _source_files(config: Any) -> list[dict]:
    paths = files_lib.list_files(str(config.data.corpus))
    validation = str(config.data.get("validation_files", "") or "")
    if validation:
        paths += files_lib.list_files(validation, field="data.validation_files")
    return [files_lib.file_record(p) for p in paths]


def make_plan(config: Any, layout: str) -> tuple[Plan, dict]:
    """The units of the configured corpus and its provenance; trains the tokenizer if missing."""
    corpus = str(config.data.corpus)
    directory = dataset_dir(config, layout)
    if files_lib.is_files_corpus(corpus):
        units, reader, provenance = _plan_files(config)
    else:
        units, reader, provenance = _plan_tfds(config)
    path = tokenizer_path(config, layout)
    sample_bytes = int(config.data.get("tokenizer_sample_bytes", DEFAULT_TOKENIZER_SAMPLE_BYTES))
    plan = Plan(
        layout=layout,
        seq_len=int(config.data.seq_len),
        directory=directory,
        tokenizer_path=path,
        reader=reader,
        units=tuple(units),
        features={},
    )
    trained_on = None
    if not os.path.exists(path):  # (a given tokenizer exists: pretrained_tokenizer_path checks)
        start = time.time()
        print(
            f"fmjax: training the {LAYOUTS[layout]['tokenizer_kind']} tokenizer on a sample of "
            f"at most {sample_bytes / 1e6:.0f} MB of {corpus} (data.tokenizer_sample_bytes)",
            flush=True,
        )
        sample = TokenizerSample(plan, sample_bytes, int(config.seed))
        train = (
            tokenizer_lib.train_or_load_wordpiece
            if layout == "mlm"
            else tokenizer_lib.train_or_load_byte_bpe
        )
        train(sample.lines(), int(config.model.vocab_size), path)
        trained_on = {
            "sample_bytes_limit": sample_bytes,
            "sample_bytes": sample.bytes_read,
            "sample_documents": sample.documents,
            "seed": int(config.seed),
            "seconds": round(time.time() - start, 1),
        }
    given = bool(tokenizer_lib.pretrained_tokenizer_path(config))
    tokenizer = _load_tokenizer(layout, path, given)
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > int(config.model.vocab_size):
        raise ConfigError(
            f"tokenizer {path} has {vocab_size} tokens > model.vocab_size="
            f"{config.model.vocab_size}; raise model.vocab_size to {vocab_size} "
            "or delete the tokenizer file"
        )
    features = _features(layout, plan.seq_len, int(config.model.vocab_size))
    plan = dataclasses.replace(
        plan,
        features={k: [v[0], list(v[1])] for k, v in features.items()},
        tokenizer_given=given,
    )
    provenance["tokenizer"] = {
        **tokenizer_lib.tokenizer_provenance(tokenizer, path, LAYOUTS[layout]["tokenizer_kind"]),
        "given": given,
        **({"trained_on": trained_on} if trained_on else {}),
    }
    return plan, provenance


def _plan_files(config: Any) -> tuple[list[Unit], dict, dict]:
    corpus = str(config.data.corpus)
    train_files = files_lib.list_files(corpus)
    validation_glob = str(config.data.get("validation_files", "") or "")
    validation_files = (
        files_lib.list_files(validation_glob, field="data.validation_files")
        if validation_glob
        else []
    )
    fraction = 0.0 if validation_files else float(config.data.get("validation_fraction", 0.01))
    if not validation_files and not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"data.validation_fraction={fraction} must be in (0, 1) when data.validation_files "
            "is empty; set one of them"
        )
    units: list[Unit] = []
    for split, paths in (
        ("train" if validation_files else "", train_files),
        ("validation", validation_files),
    ):
        group: list[str] = []
        size = 0
        for path in paths:
            group.append(path)
            size += os.path.getsize(path)
            if size >= UNIT_BYTES:
                units.append(Unit(len(units), split, size, files=tuple(group)))
                group, size = [], 0
        if group:
            units.append(Unit(len(units), split, size, files=tuple(group)))
    text_field = str(config.data.get("text_field", "text"))
    reader = {"kind": "files", "text_field": text_field, "validation_fraction": fraction}
    provenance = {
        "corpus": corpus,
        "text_field": text_field,
        "validation_files": validation_glob,
        "validation_fraction": fraction,
        "num_files": len(train_files) + len(validation_files),
        "bytes": sum(u.size for u in units),
    }
    return units, reader, provenance


def _plan_tfds(config: Any) -> tuple[list[Unit], dict, dict]:
    from fmjax.data import corpora

    corpus = str(config.data.corpus)
    data_dir = os.path.expanduser(str(config.data.data_dir))
    if corpus.startswith("tfds:") and len(corpus) > 5:
        name = corpus[5:]
        tfds_dir = os.path.join(data_dir, "tfds")
        hint = (
            f"prepare it first, e.g. 'tfds build {name} --data_dir={tfds_dir} "
            "--file_format=array_record', or set --config.data.data_dir to where it is prepared"
        )
        builder = corpora.open_prepared_tfds(name, tfds_dir, ("text",), hint)
        reader = {"kind": "tfds", "name": name, "data_dir": tfds_dir}
        provenance = {
            "corpus": corpus,
            "tfds_name": builder.name,
            "tfds_version": str(builder.version),
        }
    else:
        builder = corpora._prepared_builder(
            config.data
        )  # fetches and prepares a bundled corpus once
        reader = {
            "kind": "bundled",
            "name": corpus,
            "data_dir": data_dir,
            "source_dir": str(config.data.get("source_dir", "") or ""),
        }
        provenance = corpora._builder_provenance(corpus, builder)
    splits = builder.info.splits
    ranges: list[tuple[str, str, int, int]] = []  # (split, tfds split, start, end)
    train_docs = int(splits["train"].num_examples)
    if "validation" in splits:
        ranges.append(("train", "train", 0, train_docs))
        ranges.append(("validation", "validation", 0, int(splits["validation"].num_examples)))
    else:  # as before: the last 5% of the train documents are held out
        cut = train_docs - max(1, train_docs // 20)
        ranges += [("train", "train", 0, cut), ("validation", "train", cut, train_docs)]
    units = []
    for split, tfds_split, start, end in ranges:
        for lo in range(start, end, UNIT_DOCUMENTS):
            hi = min(end, lo + UNIT_DOCUMENTS)
            units.append(Unit(len(units), split, hi - lo, tfds_split=tfds_split, start=lo, end=hi))
    provenance.setdefault("num_train_docs", sum(u.size for u in units if u.split == "train"))
    provenance.setdefault(
        "num_validation_docs", sum(u.size for u in units if u.split == "validation")
    )
    return units, reader, provenance


# ----------------------------------------------------------------- reading documents


def _open_tfds_source(reader: dict, split: str):
    import tensorflow_datasets as tfds

    if reader["kind"] == "bundled":
        import ml_collections

        from fmjax.data import corpora

        data = ml_collections.ConfigDict(
            dict(
                corpus=reader["name"], data_dir=reader["data_dir"], source_dir=reader["source_dir"]
            )
        )
        return corpora._prepared_builder(data).as_data_source(split=split)
    builder = tfds.builder(reader["name"], data_dir=reader["data_dir"], file_format="array_record")
    return builder.as_data_source(split=split)


def unit_documents(
    plan: Plan,
    unit: Unit,
    stats: files_lib.ReadStats,
    advance: Callable[[int], None] = lambda size: None,
) -> Iterator[tuple[str, str]]:
    """(split, text) of each document of a unit, in order; advance(size) after each file/doc."""
    reader = plan.reader
    if reader["kind"] == "files":
        fraction = float(reader["validation_fraction"])
        for path in unit.files:
            stats.position = done = 0
            for text in files_lib.read_documents(path, reader["text_field"], stats):
                yield unit.split or ("validation" if _held_out(text, fraction) else "train"), text
                advance(stats.position - done)
                done = stats.position
            advance(os.path.getsize(path) - done)
        return
    source = _open_tfds_source(reader, unit.tfds_split)
    for i in range(unit.start, unit.end):
        text = source[i]["text"]
        yield unit.split, text.decode("utf-8") if isinstance(text, bytes) else str(text)
        advance(1)


def _held_out(text: str, fraction: float) -> bool:
    from fmjax.data.corpora import is_validation

    return is_validation(text, fraction)


def _lines(text: str) -> list[str]:
    from fmjax.data.corpora import split_lines

    return split_lines(text)


class TokenizerSample:
    """A bounded, seeded sample of the train documents' lines for training the tokenizer.

    Train units are visited in a seeded order, at most limit / min(#units, SAMPLE_UNITS) bytes
    from each, until `limit` bytes: memory and time do not grow with the corpus. A corpus smaller
    than the limit is used whole, in order.
    """

    def __init__(self, plan: Plan, limit: int, seed: int):
        """plan: the corpus's units; limit: bytes of text; seed: the order of the units."""
        self.plan, self.limit, self.seed = plan, int(limit), int(seed)
        self.bytes_read = 0
        self.documents = 0

    def lines(self) -> Iterator[str]:
        """The sample's lines (a generator: the tokenizer trainer streams it)."""
        units = [u for u in self.plan.units if u.split in ("", "train")]
        total = sum(u.size for u in units) if self.plan.reader["kind"] == "files" else None
        if total is None or total > self.limit:
            units = [units[i] for i in np.random.default_rng(self.seed).permutation(len(units))]
        per_unit = max(1, self.limit // max(1, min(len(units), SAMPLE_UNITS)))
        stats = files_lib.ReadStats()
        for unit in units:
            taken = 0
            for split, text in unit_documents(self.plan, unit, stats):
                if split != "train":
                    continue
                self.documents += 1
                self.bytes_read += len(text)
                taken += len(text)
                yield from _lines(text)
                if taken >= per_unit or self.bytes_read >= self.limit:
                    break
            if self.bytes_read >= self.limit:
                return


# ----------------------------------------------------------------- one unit -> its shards


def _marker_path(plan: Plan, unit: Unit) -> str:
    return os.path.join(plan.directory, "progress", f"unit-{unit.index:05d}.json")


def shard_path(plan: Plan, unit: Unit, split: str) -> str:
    """The shard of a unit's documents of one split."""
    return os.path.join(plan.directory, "shards", f"{split}-{unit.index:05d}.array_record")


def finished_unit(plan: Plan, unit: Unit) -> dict | None:
    """The result of a unit an earlier run finished (its marker and shards exist), else None."""
    path = _marker_path(plan, unit)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    for shard in result["shards"].values():
        if shard["file"] and not os.path.exists(
            os.path.join(plan.directory, "shards", shard["file"])
        ):
            return None
    return result


def prepare_unit(
    plan: Plan, unit: Unit, progress: Callable[[int, int, int], None] | None = None
) -> dict:
    """Tokenizes and packs one unit into its shards; returns (and records) what it wrote.

    progress(documents, tokens, input size) is called as the unit advances.
    """
    tokenizer = _load_tokenizer(plan.layout, plan.tokenizer_path, plan.tokenizer_given)
    features = {k: (v[0], tuple(v[1])) for k, v in plan.features.items()}
    writers = {s: ShardWriter(shard_path(plan, unit, s), features) for s in SPLITS}
    packer = _Packer(plan, tokenizer, writers)
    stats = files_lib.ReadStats()
    documents = tokens = 0
    pending: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    pending_chars = dict.fromkeys(SPLITS, 0)
    reported = {"documents": 0, "tokens": 0, "size": 0}
    done_size = 0

    def advance(size: int) -> None:
        nonlocal done_size
        done_size += size

    def report() -> None:
        if progress is not None:
            progress(
                documents - reported["documents"],
                tokens - reported["tokens"],
                done_size - reported["size"],
            )
        reported.update(documents=documents, tokens=tokens, size=done_size)

    for split, text in unit_documents(plan, unit, stats, advance):
        lines = _lines(text)
        if not lines:
            continue
        documents += 1
        pending[split].append(lines)
        pending_chars[split] += len(text)
        if pending_chars[split] >= ENCODE_CHARS:
            tokens += packer.add(split, pending[split])
            pending[split], pending_chars[split] = [], 0
            report()
    for split in SPLITS:
        tokens += packer.add(split, pending[split])
    packer.finish()
    done_size = unit.size
    report()
    result = {
        "unit": unit.index,
        "documents": documents,
        "tokens": tokens,
        "skipped_records": stats.skipped_records,
        "shards": {s: writers[s].close() for s in SPLITS},
    }
    marker = _marker_path(plan, unit)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    tmp = f"{marker}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, marker)
    return result


class _Packer:
    """The layout's tokenize-and-pack step, writing rows to each split's shard."""

    def __init__(self, plan: Plan, tokenizer: Any, writers: dict[str, ShardWriter]):
        self.layout, self.tokenizer, self.writers = plan.layout, tokenizer, writers
        if plan.layout == "mlm":
            special = tokenizer_lib.wordpiece_special_ids(tokenizer, plan.tokenizer_path)
            self.sentences = SentencePacker(plan.seq_len, special.cls, special.sep, special.pad)
        else:
            self.eot = tokenizer_lib.end_of_text_id(tokenizer, plan.tokenizer_path)
            self.documents = {s: DocumentPacker(plan.seq_len, self.eot) for s in SPLITS}

    def add(self, split: str, documents: list[list[str]]) -> int:
        """Encodes and packs documents (lists of lines) of one split; returns the token count."""
        if not documents:
            return 0
        writer = self.writers[split]
        if self.layout == "mlm":
            flat = [line for doc in documents for line in doc]
            ids = [e.ids for e in self.tokenizer.encode_batch(flat, add_special_tokens=False)]
            position = 0
            for doc in documents:
                for row in self.sentences.rows(ids[position : position + len(doc)]):
                    writer.write({"input_ids": row})
                position += len(doc)
            return sum(map(len, ids))
        from fmjax.data.clm import encode_documents  # clm imports this module

        count = 0
        packer = self.documents[split]
        for ids in encode_documents(self.tokenizer, documents):
            count += len(ids)
            for tokens, segments in packer.add(ids):
                writer.write({"input_ids": tokens, "segment_ids": segments})
        return count

    def finish(self) -> None:
        """Writes the causal-LM packers' last rows."""
        if self.layout == "clm":
            for split, packer in self.documents.items():
                for tokens, segments in packer.flush():
                    self.writers[split].write({"input_ids": tokens, "segment_ids": segments})


# ----------------------------------------------------------------- running the units


_PROGRESS: Any = None  # the queue a worker process reports progress to


def _init_worker(progress_queue: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue
    # One tokenizer thread per worker: the workers are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _report(documents: int, tokens: int, size: int) -> None:
    _PROGRESS.put((documents, tokens, size))


def _run_unit_in_worker(job: tuple[Plan, Unit]) -> dict:
    plan, unit = job
    return prepare_unit(plan, unit, _report)


def run_units(plan: Plan, workers: int) -> list[dict]:
    """Prepares every unfinished unit with `workers` processes, behind a progress bar."""
    results = {}
    pending = []
    for unit in plan.units:
        done = finished_unit(plan, unit)
        if done is None:
            pending.append(unit)
        else:
            results[unit.index] = done
    kind = "B" if plan.reader["kind"] == "files" else "doc"
    bar = tqdm.tqdm(
        total=sum(u.size for u in plan.units),
        initial=sum(u.size for u in plan.units if u.index in results),
        desc=f"preparing {os.path.basename(plan.directory)}",
        unit=kind,
        unit_scale=kind == "B",
        mininterval=1.0,
        smoothing=0.1,
    )
    counts = {
        "docs": sum(r["documents"] for r in results.values()),
        "tokens": sum(r["tokens"] for r in results.values()),
    }

    def progress(documents: int, tokens: int, size: int) -> None:
        counts["docs"] += documents
        counts["tokens"] += tokens
        bar.set_postfix(docs=f"{counts['docs']:,}", tokens=f"{counts['tokens']:,}", refresh=False)
        bar.update(size)

    with bar:
        if workers <= 1 or len(pending) <= 1:
            for unit in pending:
                results[unit.index] = prepare_unit(plan, unit, progress)
        else:
            context = multiprocessing.get_context("spawn")  # no fork of a process running JAX
            progress_queue = context.Queue()
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set() or not progress_queue.empty():
                    try:
                        progress(*progress_queue.get(timeout=0.2))
                    except queue.Empty:
                        continue

            thread = threading.Thread(target=drain, daemon=True)
            thread.start()
            try:
                with context.Pool(
                    min(workers, len(pending)), _init_worker, (progress_queue,), maxtasksperchild=8
                ) as pool:
                    for result in pool.imap_unordered(
                        _run_unit_in_worker, [(plan, u) for u in pending]
                    ):
                        results[result["unit"]] = result
            finally:
                stop.set()
                thread.join()
    return [results[u.index] for u in plan.units]


def write_record(plan: Plan, provenance: dict, results: list[dict]) -> dict:
    """Writes the dataset's record (last, atomically) from the units' results; returns it."""
    splits = {}
    for split in SPLITS:
        shards = [r["shards"][split] for r in results if r["shards"][split]["rows"]]
        splits[split] = {"shards": shards, "rows": sum(s["rows"] for s in shards)}
    if not splits["train"]["rows"]:
        raise ConfigError(f"{provenance['corpus']} holds no text to train on; check data.corpus")
    if not splits["validation"]["rows"]:
        raise ConfigError(
            f"{provenance['corpus']} holds no held-out text; set data.validation_files or "
            "raise data.validation_fraction"
        )
    sources: dict = {"packer_version": PACKER_VERSION}
    if plan.reader["kind"] == "files":
        sources["files"] = [files_lib.file_record(p) for u in plan.units for p in u.files]
    else:
        sources["tfds"] = {k: v for k, v in plan.reader.items() if k != "data_dir"}
    skipped = sum(r["skipped_records"] for r in results)
    if skipped:
        print(f"fmjax: skipped {skipped} undecodable records of {provenance['corpus']}")
    record = {
        "format": "fmjax packed text",
        "packer_version": PACKER_VERSION,
        "directory": plan.directory,
        "layout": plan.layout,
        "seq_len": plan.seq_len,
        "features": plan.features,
        "corpus": {k: v for k, v in provenance.items() if k != "tokenizer"},
        "tokenizer": provenance["tokenizer"],
        "sources": sources,
        "num_units": len(plan.units),
        "num_documents": sum(r["documents"] for r in results),
        "num_tokens": sum(r["tokens"] for r in results),
        "skipped_records": skipped,
        "splits": splits,
    }
    path = os.path.join(plan.directory, RECORD_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return record
