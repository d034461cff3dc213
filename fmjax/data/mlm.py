"""Masked-LM data for BERT: corpus -> WordPiece -> packed sequences (cached) -> masked batches."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import numpy as np
import tokenizers
import tqdm

from fmjax.config import ConfigError
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import corpus_provenance as corpus_provenance_of
from fmjax.data.corpora import load_corpus, sha256_file
from fmjax.data.pipeline import Loader, fixed_batches, make_loader
from fmjax.data.text import mask_for_mlm, pack_sentences

ENCODE_CHUNK = 8192  # sentences per encode_batch call (one progress-bar tick)
EVAL_SEED_OFFSET = 1_000_003  # eval masking uses its own stream, fixed for the whole run


@dataclasses.dataclass
class MlmData:
    """Everything the trainer needs for masked-LM pretraining."""

    train: Loader
    eval_batches: list[dict[str, np.ndarray]]
    tokenizer: tokenizers.Tokenizer
    vocab_size: int
    provenance: dict


def corpus_dir_name(corpus: str) -> str:
    """A folder name for a corpus name (tfds:wikipedia -> tfds_wikipedia)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus)


def encode_documents(
    tok: tokenizers.Tokenizer, documents: list[list[str]], desc: str
) -> list[list[list[int]]]:
    """Token ids (no special tokens) of every sentence of every document."""
    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    with tqdm.tqdm(total=len(flat), desc=desc, unit="sent", mininterval=1.0) as bar:
        for start in range(0, len(flat), ENCODE_CHUNK):
            chunk = flat[start : start + ENCODE_CHUNK]
            ids.extend(e.ids for e in tok.encode_batch(chunk, add_special_tokens=False))
            bar.update(len(chunk))
    out, pos = [], 0
    for doc in documents:
        out.append(ids[pos : pos + len(doc)])
        pos += len(doc)
    return out


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def build_mlm_data(config: Any) -> MlmData:
    """Builds (or loads from the data dir cache) the MLM train loader and fixed eval batches."""
    data = config.data
    seq_len = int(data.seq_len)
    target_vocab = int(config.model.vocab_size)
    corpus_dir = os.path.join(
        os.path.expanduser(str(data.data_dir)), corpus_dir_name(str(data.corpus))
    )
    tok_path = os.path.join(corpus_dir, f"wordpiece-{target_vocab}.json")
    cache = {
        split: os.path.join(corpus_dir, f"mlm-seq{seq_len}-wp{target_vocab}-{split}.npy")
        for split in ("train", "validation")
    }

    corpus = None
    corpus_provenance: dict
    if not (os.path.exists(tok_path) and all(map(os.path.exists, cache.values()))):
        corpus = load_corpus(data)
        corpus_provenance = corpus.provenance
    else:
        corpus_provenance = corpus_provenance_of(data)
    tok = tokenizer_lib.train_or_load_wordpiece(
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
            _save_npy(
                path,
                pack_sentences(
                    ids, seq_len, tokenizer_lib.CLS_ID, tokenizer_lib.SEP_ID, tokenizer_lib.PAD_ID
                ),
            )
        arrays[split] = np.load(path, mmap_mode="r")
        if arrays[split].ndim != 2 or arrays[split].shape[1] != seq_len:
            raise ConfigError(
                f"cached sequences {path} have shape {arrays[split].shape}, "
                f"expected [N, {seq_len}]; delete the file to rebuild it"
            )

    transform = functools.partial(
        _mask_transform,
        mask_prob=float(config.task.mask_prob),
        max_predictions=int(config.task.max_predictions),
        vocab_size=vocab_size,
    )
    batch_size = int(config.train.batch_size)
    train = make_loader(
        arrays["train"], transform, global_batch_size=batch_size, seed=int(config.seed)
    )
    eval_batches = fixed_batches(
        arrays["validation"],
        transform,
        batch_size=batch_size,
        num_batches=int(config.train.eval_batches),
        seed=int(config.seed) + EVAL_SEED_OFFSET,
    )
    provenance = {
        **corpus_provenance,
        "tokenizer": {
            "path": tok_path,
            "sha256": sha256_file(tok_path),
            "kind": "wordpiece",
            "vocab_size": vocab_size,
        },
        "seq_len": seq_len,
        "num_train_sequences": int(arrays["train"].shape[0]),
        "num_eval_sequences": int(arrays["validation"].shape[0]),
        "sequence_files": {split: os.path.basename(path) for split, path in cache.items()},
    }
    return MlmData(
        train=train,
        eval_batches=eval_batches,
        tokenizer=tok,
        vocab_size=vocab_size,
        provenance=provenance,
    )


def _mask_transform(
    example: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float,
    max_predictions: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    return mask_for_mlm(
        np.asarray(example),
        rng,
        mask_prob=mask_prob,
        max_predictions=max_predictions,
        mask_id=tokenizer_lib.MASK_ID,
        vocab_size=vocab_size,
        special_ids=(
            tokenizer_lib.PAD_ID,
            tokenizer_lib.UNK_ID,
            tokenizer_lib.CLS_ID,
            tokenizer_lib.SEP_ID,
            tokenizer_lib.MASK_ID,
        ),
        pad_id=tokenizer_lib.PAD_ID,
    )
