"""Corpus -> trained tokenizer -> packed token arrays, cached in the data dir."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tokenizers

from fmjax.data.corpora import corpus_provenance, load_corpus, sha256_file
from fmjax.data.tokenizer import (
    load_tokenizer_file,
    pretrained_tokenizer_path,
    tokenizer_provenance,
)
from fmjax.errors import ConfigError

SPLITS = ("train", "validation")
TrainTokenizer = Callable[[Iterable[str], int, str], tokenizers.Tokenizer]
# (tokenizer, documents, progress-bar label) -> the split's packed array
PackSplit = Callable[[tokenizers.Tokenizer, list[list[str]], str], np.ndarray]


@dataclasses.dataclass
class TokenizedCorpus:
    """A corpus's tokenizer and its packed arrays per split, with their provenance."""

    tokenizer: tokenizers.Tokenizer
    vocab_size: int
    arrays: dict[str, np.ndarray]
    provenance: dict


def corpus_dir_name(corpus: str) -> str:
    """A folder name for a corpus name (tfds:wikipedia -> tfds_wikipedia)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus)


def corpus_dir(config: Any) -> str:
    """<data_dir>/<corpus>: where a corpus's tokenizers and packed arrays live."""
    data_dir = os.path.expanduser(str(config.data.data_dir))
    return os.path.join(data_dir, corpus_dir_name(str(config.data.corpus)))


def save_npy(path: str, array: np.ndarray) -> None:
    """Writes atomically, so a killed preparation never leaves a truncated cache."""
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare_tokenized_corpus(
    config: Any,
    *,
    tokenizer_kind: str,
    tokenizer_file: str,
    train_tokenizer: TrainTokenizer,
    cache_prefix: str,
    pack_split: PackSplit,
    example_shape: tuple[int, ...],
) -> TokenizedCorpus:
    """Trains (once) the tokenizer and packs each split (once); later calls read the cache."""
    target_vocab = int(config.model.vocab_size)
    directory = corpus_dir(config)
    tokenizer_path = os.path.join(directory, tokenizer_file)
    # The model's own tokenizer (data.tokenizer_file, or that of train.init_from's run, e.g. one
    # fmjax.tools.import_hf wrote): used as it is, whatever its special ids; never retrained.
    given_tokenizer = pretrained_tokenizer_path(config)
    if given_tokenizer:
        tokenizer_path = given_tokenizer
        cache_prefix = f"{cache_prefix}-tokenizer{sha256_file(given_tokenizer)[:12]}"
    cache = {split: os.path.join(directory, f"{cache_prefix}-{split}.npy") for split in SPLITS}

    corpus = None
    if os.path.exists(tokenizer_path) and all(map(os.path.exists, cache.values())):
        provenance = corpus_provenance(config.data)
    else:
        corpus = load_corpus(config.data)
        provenance = corpus.provenance
    sentences = (s for doc in (corpus.train if corpus else []) for s in doc)
    if given_tokenizer:
        tokenizer = load_tokenizer_file(given_tokenizer)
    else:
        tokenizer = train_tokenizer(sentences, target_vocab, tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > target_vocab:
        raise ConfigError(
            f"tokenizer {tokenizer_path} has {vocab_size} tokens > model.vocab_size="
            f"{target_vocab}; raise model.vocab_size to {vocab_size} or delete the tokenizer file"
        )
    arrays = {}
    for split, path in cache.items():
        if not os.path.exists(path):
            documents = corpus.train if split == "train" else corpus.validation
            save_npy(path, pack_split(tokenizer, documents, f"{config.data.corpus} {split}"))
        arrays[split] = np.load(path, mmap_mode="r")
        if arrays[split].shape[1:] != example_shape:
            raise ConfigError(
                f"cached sequences {path} have shape {arrays[split].shape}, expected "
                f"[N, {', '.join(map(str, example_shape))}]; delete the file to rebuild it"
            )
    provenance = {
        **provenance,
        "tokenizer": tokenizer_provenance(tokenizer, tokenizer_path, tokenizer_kind),
        "num_train_sequences": int(arrays["train"].shape[0]),
        "num_eval_sequences": int(arrays["validation"].shape[0]),
        "sequence_files": {split: os.path.basename(path) for split, path in cache.items()},
    }
    return TokenizedCorpus(tokenizer, vocab_size, arrays, provenance)
