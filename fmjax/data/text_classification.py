"""Labeled text for classification: a TFDS builder's splits or your files -> WordPiece ids ->
batches.

Datasets (config.data.dataset): "rotten_tomatoes" (2 classes) and "wordnet_supersenses"
(45 classes), see fmjax/data/corpora/, or "files:/path/train.csv" (CSV, TSV or JSONL: see
fmjax/data/labeled_files.py). Texts become `[CLS] text [SEP]` (pairs `[CLS] a [SEP] b [SEP]`,
token type 1 on b) cut to data.seq_len. model.num_classes=0 takes the number of classes from
the data.

The tokenizer must be the one the encoder was pretrained with. It is, in order:
data.tokenizer_file (a tokenizer.json); the tokenizer of the workdir data.tokenizer_from; that of
train.init_from; otherwise a WordPiece trained on the train texts (saved in the data dir).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import prepared_tfds_builder
from fmjax.data.label_splits import select_splits
from fmjax.data.labeled_files import is_files_dataset, read_labeled_splits
from fmjax.data.pipeline import loader_options, make_loader
from fmjax.data.preparation import corpus_dir_name
from fmjax.data.task_data import EvalBatches, TaskData
from fmjax.errors import ConfigError

KNOWN_DATASETS = ("rotten_tomatoes", "wordnet_supersenses", "files:/path/train.csv")


class EncodedTexts(Sequence):
    """Token ids [N, L], attention mask [N, L], token types [N, L] and labels [N] as a sequence
    of {"input_ids", "attention_mask", "token_type_ids", "label"} examples."""

    def __init__(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
    ):
        self.input_ids, self.labels = input_ids, labels
        self.attention_mask, self.token_type_ids = attention_mask, token_type_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "token_type_ids": self.token_type_ids[index],
            "label": self.labels[index],
        }


def classification_example(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One example -> {"input_ids", "attention_mask" (1 on real tokens), "token_type_ids",
    "labels", "weights"}."""
    return {
        "input_ids": np.asarray(example["input_ids"], np.int32),
        "attention_mask": np.asarray(example["attention_mask"], np.int32),
        "token_type_ids": np.asarray(example["token_type_ids"], np.int32),
        "labels": np.int32(example["label"]),
        "weights": np.float32(1.0),
    }


def dataset_builder(config: Any) -> tuple[Any, tuple[str, ...]]:
    """The prepared TFDS builder of data.dataset and its class names."""
    name = str(config.data.get("dataset", ""))
    if name == "rotten_tomatoes":
        from fmjax.data.corpora.rotten_tomatoes import CLASS_NAMES
        from fmjax.data.corpora.rotten_tomatoes import RottenTomatoes as builder_cls
    elif name == "wordnet_supersenses":
        from fmjax.data.corpora.wordnet_supersenses import LEXNAMES as CLASS_NAMES
        from fmjax.data.corpora.wordnet_supersenses import WordnetSupersenses as builder_cls
    else:
        raise ConfigError(
            f"unknown data.dataset={name!r}; known text classification datasets: "
            f"{', '.join(KNOWN_DATASETS)}"
        )
    data_dir = os.path.expanduser(str(config.data.data_dir))
    source_dir = os.path.expanduser(str(config.data.get("source_dir", "") or ""))
    return prepared_tfds_builder(builder_cls, data_dir, source_dir), CLASS_NAMES


def _texts_and_labels(source: Any) -> tuple[list[str], np.ndarray]:
    examples = source.__getitems__(list(range(len(source))))  # one batched read
    texts = [
        e["text"].decode("utf-8") if isinstance(e["text"], bytes) else e["text"] for e in examples
    ]
    return texts, np.asarray([int(e["label"]) for e in examples], np.int32)


def encode(
    tok: tokenizers.Tokenizer,
    texts: list[str],
    seq_len: int,
    pairs: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(int32 [N, seq_len] ids of `[CLS] text [SEP]` (or `[CLS] text [SEP] pair [SEP]`), cut to
    seq_len ending with [SEP] and [PAD]-padded; the attention mask (1 on real tokens); the token
    types (1 on the pair's second text); the number of texts that were cut)."""
    special = tokenizer_lib.wordpiece_special_ids(tok)
    ids = np.full((len(texts), seq_len), special.pad, np.int32)
    mask = np.zeros((len(texts), seq_len), np.int32)
    types = np.zeros((len(texts), seq_len), np.int32)
    num_cut = 0
    inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
    for row, encoding in enumerate(tok.encode_batch(inputs)):
        tokens, type_ids = encoding.ids, encoding.type_ids
        if len(tokens) > seq_len:
            tokens, num_cut = tokens[: seq_len - 1] + [special.sep], num_cut + 1
            type_ids = type_ids[: seq_len - 1] + type_ids[-1:]
        ids[row, : len(tokens)], types[row, : len(tokens)] = tokens, type_ids
        mask[row, : len(tokens)] = 1
    return ids, mask, types, num_cut


def load_tokenizer(config: Any, train_texts: list[str]) -> tuple[tokenizers.Tokenizer, str]:
    """(tokenizer, path): the pretrained run's, or a WordPiece trained on the train texts."""
    path = tokenizer_lib.pretrained_tokenizer_path(config)
    vocab_size = int(config.model.vocab_size)
    if path:
        tok = tokenizer_lib.load_tokenizer_file(path)
    else:
        data_dir = os.path.expanduser(str(config.data.data_dir))
        folder = corpus_dir_name(str(config.data.dataset))  # files:/a/b.csv -> files_a_b.csv
        path = os.path.join(data_dir, folder, f"wordpiece-{vocab_size}.json")
        tok = tokenizer_lib.train_or_load_wordpiece(train_texts, vocab_size, path)
    if tok.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens > model.vocab_size={vocab_size}; "
            "use the pretrained model's vocab_size"
        )
    return tok, path


def resolve_num_classes(config: Any) -> None:
    """Sets model.num_classes=0 ("from the data") to the dataset's number of classes."""
    if int(config.model.get("num_classes", 0)) <= 0:
        config.model.num_classes = len(labeled_data(config)[1])


def labeled_data(config: Any) -> tuple[dict, tuple[str, ...], dict]:
    """({split: (texts, pair texts or None, labels)} for train and test, class names,
    provenance) of data.dataset."""
    if is_files_dataset(str(config.data.get("dataset", ""))):
        files = read_labeled_splits(config)
        return {"train": files.train, "test": files.test}, files.class_names, files.provenance
    builder, class_names = dataset_builder(config)
    splits = {}
    for split in ("train", "test"):
        texts, labels = _texts_and_labels(builder.as_data_source(split=split))
        splits[split] = (texts, None, labels)
    provenance = {
        "dataset": str(config.data.dataset),
        **dict(builder.info.metadata),
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "class_names": list(class_names),
    }
    return splits, class_names, provenance


def build_text_classification_data(config: Any) -> TaskData:
    """The shuffled train loader, the whole test split for eval, and provenance."""
    splits, class_names, provenance = labeled_data(config)
    splits, eval_split, selection = select_splits(splits, config.data, int(config.seed))
    num_classes = int(config.model.num_classes)
    if num_classes != len(class_names):
        raise ConfigError(
            f"model.num_classes={num_classes}, but data.dataset={config.data.dataset} has "
            f"{len(class_names)} classes; set --config.model.num_classes={len(class_names)} "
            "(or 0: from the data)"
        )
    seq_len = int(config.data.seq_len)
    tok, path = load_tokenizer(config, splits["train"][0])
    special = tokenizer_lib.wordpiece_special_ids(tok, path)
    tokenizer_lib.check_ids_fit(special.all(), int(config.model.vocab_size), path)
    encoded, num_cut = {}, {}
    for split, (texts, pairs, labels) in splits.items():
        ids, mask, types, num_cut[split] = encode(tok, texts, seq_len, pairs)
        encoded[split] = EncodedTexts(ids, np.asarray(labels, np.int32), mask, types)
    batch_size, seed = int(config.train.batch_size), int(config.seed)
    train = make_loader(
        encoded["train"],
        classification_example,
        global_batch_size=batch_size,
        seed=seed,
        **loader_options(config),
    )
    held_out = EvalBatches(encoded[eval_split], classification_example, batch_size, seed)
    provenance = {
        **provenance,
        "splits": selection,
        "num_truncated_texts": num_cut,  # per split: longer than data.seq_len tokens
        "tokenizer": {
            **tokenizer_lib.tokenizer_provenance(tok, path, "wordpiece"),
            "special_ids": dataclasses.asdict(special),
        },
    }
    return TaskData(
        train=train,
        eval_batches=held_out,
        provenance=provenance,
        tokenizer=tok,
        class_names=tuple(class_names),
    )
