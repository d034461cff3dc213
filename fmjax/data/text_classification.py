"""Labeled text for classification: a TFDS builder's splits -> WordPiece ids -> batches.

Datasets (config.data.dataset): "rotten_tomatoes" (2 classes) and "wordnet_supersenses"
(45 classes), see fmjax/data/corpora/. Texts become `[CLS] text [SEP]` cut to data.seq_len.

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
from fmjax.data.corpora import sha256_file
from fmjax.data.images import EvalBatches
from fmjax.data.pipeline import Loader, make_loader
from fmjax.errors import ConfigError

KNOWN_DATASETS = ("rotten_tomatoes", "wordnet_supersenses")


@dataclasses.dataclass
class HeldOutText:
    """The whole test split in order, in padded batches (weight 0 rows), and the class names."""

    batches: EvalBatches
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (self.batches[i] for i in range(len(self.batches)))


@dataclasses.dataclass
class TextClassificationData:
    """Everything the trainer needs for text classification."""

    train: Loader
    eval_batches: HeldOutText
    tokenizer: tokenizers.Tokenizer
    vocab_size: int
    provenance: dict


class EncodedTexts(Sequence):
    """Token ids [N, L] and labels [N] as a sequence of {"input_ids", "label"} examples."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "label": self.labels[index]}


def classification_example(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One example -> {"input_ids", "attention_mask" (1 on real tokens), "labels", "weights"}."""
    input_ids = np.asarray(example["input_ids"], np.int32)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != tokenizer_lib.PAD_ID).astype(np.int32),
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
    builder = builder_cls(data_dir=os.path.join(data_dir, "tfds"), source_dir=source_dir)
    builder.download_and_prepare()
    return builder, CLASS_NAMES


def _texts_and_labels(source: Any) -> tuple[list[str], np.ndarray]:
    examples = source.__getitems__(list(range(len(source))))  # one batched read
    texts = [
        e["text"].decode("utf-8") if isinstance(e["text"], bytes) else e["text"] for e in examples
    ]
    return texts, np.asarray([int(e["label"]) for e in examples], np.int32)


def encode(tok: tokenizers.Tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, int]:
    """(int32 [N, seq_len] ids of `[CLS] text [SEP]`, cut to seq_len ending with [SEP] and
    [PAD]-padded; the number of texts that were cut)."""
    ids = np.full((len(texts), seq_len), tokenizer_lib.PAD_ID, np.int32)
    num_cut = 0
    for row, encoding in enumerate(tok.encode_batch(texts)):
        tokens = encoding.ids
        if len(tokens) > seq_len:
            tokens, num_cut = tokens[: seq_len - 1] + [tokenizer_lib.SEP_ID], num_cut + 1
        ids[row, : len(tokens)] = tokens
    return ids, num_cut


def pretrained_tokenizer_path(config: Any) -> str:
    """The tokenizer file named by data.tokenizer_file / data.tokenizer_from / train.init_from,
    or '' when none is set (then one is trained)."""
    given = os.path.expanduser(str(config.data.get("tokenizer_file", "") or ""))
    if given:
        if not os.path.isfile(given):
            raise ConfigError(
                f"data.tokenizer_file {given} does not exist; point it at the tokenizer.json the "
                "encoder was pretrained with (or set it to '')"
            )
        return given
    source = str(config.data.get("tokenizer_from", "") or "") or str(
        config.train.get("init_from", "") or ""
    )
    if not source:
        return ""
    from fmjax.tools.workdir import tokenizer_of
    from fmjax.train.init_from import resolve_checkpoint

    workdir, _, step = resolve_checkpoint(source)
    return tokenizer_of(workdir, step)[1]


def load_tokenizer(config: Any, train_texts: list[str]) -> tuple[tokenizers.Tokenizer, str]:
    """(tokenizer, path): the pretrained run's, or a WordPiece trained on the train texts."""
    path = pretrained_tokenizer_path(config)
    vocab_size = int(config.model.vocab_size)
    if path:
        tok = tokenizers.Tokenizer.from_file(path)
    else:
        data_dir = os.path.expanduser(str(config.data.data_dir))
        path = os.path.join(data_dir, str(config.data.dataset), f"wordpiece-{vocab_size}.json")
        tok = tokenizer_lib.train_or_load_wordpiece(train_texts, vocab_size, path)
    if tok.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens > model.vocab_size={vocab_size}; "
            "use the pretrained model's vocab_size"
        )
    return tok, path


def build_text_classification_data(config: Any) -> TextClassificationData:
    """The shuffled train loader, the whole test split for eval, and provenance."""
    builder, class_names = dataset_builder(config)
    num_classes = int(config.model.num_classes)
    if num_classes != len(class_names):
        raise ConfigError(
            f"model.num_classes={num_classes}, but data.dataset={config.data.dataset} has "
            f"{len(class_names)} classes; set --config.model.num_classes={len(class_names)}"
        )
    seq_len = int(config.data.seq_len)
    splits = {
        split: _texts_and_labels(builder.as_data_source(split=split)) for split in ("train", "test")
    }
    tok, path = load_tokenizer(config, splits["train"][0])
    encoded, num_cut = {}, {}
    for split, (texts, labels) in splits.items():
        ids, num_cut[split] = encode(tok, texts, seq_len)
        encoded[split] = EncodedTexts(ids, labels)
    batch_size, seed = int(config.train.batch_size), int(config.seed)
    train = make_loader(
        encoded["train"], classification_example, global_batch_size=batch_size, seed=seed
    )
    held_out = HeldOutText(
        EvalBatches(encoded["test"], classification_example, batch_size, seed), class_names
    )
    provenance = {
        "dataset": str(config.data.dataset),
        **dict(builder.info.metadata),
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "num_truncated_texts": num_cut,  # per split: longer than data.seq_len tokens
        "tokenizer": {
            "path": path,
            "sha256": sha256_file(path),
            "kind": "wordpiece",
            "vocab_size": tok.get_vocab_size(),
        },
    }
    return TextClassificationData(
        train=train,
        eval_batches=held_out,
        tokenizer=tok,
        vocab_size=tok.get_vocab_size(),
        provenance=provenance,
    )
