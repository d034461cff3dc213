"""Causal-LM data for GPT: corpus -> byte-level BPE -> packed documents (cached) -> batches."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tokenizers
import tqdm

from fmjax.config import ConfigError
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import corpus_provenance as corpus_provenance_of
from fmjax.data.corpora import load_corpus, sha256_file
from fmjax.data.mlm import _save_npy, corpus_dir_name
from fmjax.data.pipeline import Loader, fixed_batches, make_loader
from fmjax.data.text import causal_lm_example, pack_documents

ENCODE_CHUNK = 64  # documents per encode_batch call (one progress-bar tick)


@dataclasses.dataclass
class ClmData:
    """Everything the trainer (and generation) needs for causal-LM pretraining."""

    train: Loader
    eval_batches: list[dict[str, np.ndarray]]
    tokenizer: tokenizers.Tokenizer
    vocab_size: int
    provenance: dict


def tokenizer_path(config: Any) -> str:
    """Where the byte-level BPE of config.data.corpus at config.model.vocab_size is saved."""
    return os.path.join(_corpus_dir(config), f"byte-bpe-{int(config.model.vocab_size)}.json")


def load_tokenizer(config: Any) -> tokenizers.Tokenizer:
    """The trained tokenizer of a run (ConfigError if the data was never prepared)."""
    path = tokenizer_path(config)
    if not os.path.exists(path):
        raise ConfigError(
            f"no tokenizer at {path}; train first (--mode=train) or set --config.data.data_dir"
        )
    return tokenizer_lib.train_or_load_byte_bpe([], int(config.model.vocab_size), path)


def encode_documents(tok: tokenizers.Tokenizer, documents: list[list[str]], desc: str):
    """Token ids of each document (lines joined by newlines) framed as <|endoftext|> doc <|eot|>.

    The leading end-of-text token lets a prompt-less model start a document; the trailing one
    lets it end one.
    """
    eot = tokenizer_lib.END_OF_TEXT_ID
    out: list[np.ndarray] = []
    with tqdm.tqdm(total=len(documents), desc=desc, unit="doc", mininterval=1.0) as bar:
        for start in range(0, len(documents), ENCODE_CHUNK):
            texts = ["\n".join(doc) for doc in documents[start : start + ENCODE_CHUNK]]
            for encoding in tok.encode_batch(texts, add_special_tokens=False):
                out.append(np.asarray([eot, *encoding.ids, eot], dtype=np.int32))
            bar.update(len(texts))
    return out


def build_clm_data(config: Any) -> ClmData:
    """Builds (or loads from the data dir cache) the causal-LM train loader and eval batches."""
    data = config.data
    seq_len = int(data.seq_len)
    target_vocab = int(config.model.vocab_size)
    corpus_dir = _corpus_dir(config)
    tok_path = tokenizer_path(config)
    cache = {
        split: os.path.join(corpus_dir, f"clm-seq{seq_len}-bpe{target_vocab}-{split}.npy")
        for split in ("train", "validation")
    }

    corpus = None
    if not (os.path.exists(tok_path) and all(map(os.path.exists, cache.values()))):
        corpus = load_corpus(data)
        corpus_provenance = corpus.provenance
    else:
        corpus_provenance = corpus_provenance_of(data)
    tok = tokenizer_lib.train_or_load_byte_bpe(
        (s for doc in (corpus.train if corpus else []) for s in doc), target_vocab, tok_path
    )
    vocab_size = tok.get_vocab_size()
    if vocab_size > target_vocab:
        raise ConfigError(
            f"tokenizer {tok_path} has {vocab_size} tokens > model.vocab_size={target_vocab}; "
            f"raise model.vocab_size to {vocab_size} or delete the tokenizer file"
        )
    arrays = {}
    for split, path in cache.items():
        if not os.path.exists(path):
            docs = corpus.train if split == "train" else corpus.validation
            ids = encode_documents(tok, docs, desc=f"tokenizing {data.corpus} {split}")
            tokens, segments = pack_documents(ids, seq_len, pad_id=tokenizer_lib.END_OF_TEXT_ID)
            _save_npy(path, np.stack([tokens, segments], axis=1))  # [N, 2, L]
        arrays[split] = np.load(path, mmap_mode="r")
        if arrays[split].ndim != 3 or arrays[split].shape[1:] != (2, seq_len):
            raise ConfigError(
                f"cached sequences {path} have shape {arrays[split].shape}, "
                f"expected [N, 2, {seq_len}]; delete the file to rebuild it"
            )

    batch_size = int(config.train.batch_size)
    train = make_loader(
        arrays["train"], _example, global_batch_size=batch_size, seed=int(config.seed)
    )
    eval_batches = fixed_batches(
        arrays["validation"],
        _example,
        batch_size=batch_size,
        num_batches=int(config.train.eval_batches),
        seed=int(config.seed),
    )
    provenance = {
        **corpus_provenance,
        "tokenizer": {
            "path": tok_path,
            "sha256": sha256_file(tok_path),
            "kind": "byte_bpe",
            "vocab_size": vocab_size,
        },
        "seq_len": seq_len,
        "num_train_sequences": int(arrays["train"].shape[0]),
        "num_eval_sequences": int(arrays["validation"].shape[0]),
        "sequence_files": {split: os.path.basename(path) for split, path in cache.items()},
    }
    return ClmData(
        train=train,
        eval_batches=eval_batches,
        tokenizer=tok,
        vocab_size=vocab_size,
        provenance=provenance,
    )


def _corpus_dir(config: Any) -> str:
    data_dir = os.path.expanduser(str(config.data.data_dir))
    return os.path.join(data_dir, corpus_dir_name(str(config.data.corpus)))


def _example(row: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng  # causal-LM examples are not randomized
    row = np.asarray(row)
    return causal_lm_example(row[0], row[1])
