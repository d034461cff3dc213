"""Causal-LM data for GPT: corpus -> byte-level BPE -> packed documents (cached) -> batches."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tokenizers
import tqdm

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.pipeline import fixed_batches, make_loader
from fmjax.data.prepared import corpus_dir, prepare_tokenized_corpus
from fmjax.data.task_data import TaskData
from fmjax.data.text import causal_lm_example, pack_documents
from fmjax.errors import ConfigError

ENCODE_CHUNK = 64  # documents per encode_batch call (one progress-bar tick)


def tokenizer_path(config: Any) -> str:
    """Where the byte-level BPE of config.data.corpus at config.model.vocab_size is saved."""
    return os.path.join(corpus_dir(config), f"byte-bpe-{int(config.model.vocab_size)}.json")


def load_tokenizer(config: Any) -> tokenizers.Tokenizer:
    """The tokenizer of a run: the model's own (data.tokenizer_file or train.init_from's), else
    the one trained on the corpus (ConfigError if the data was never prepared)."""
    given = tokenizer_lib.pretrained_tokenizer_path(config)
    if given:
        return tokenizer_lib.load_tokenizer_file(given)
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
    eot = tokenizer_lib.end_of_text_id(tok)
    out: list[np.ndarray] = []
    with tqdm.tqdm(total=len(documents), desc=desc, unit="doc", mininterval=1.0) as bar:
        for start in range(0, len(documents), ENCODE_CHUNK):
            texts = ["\n".join(doc) for doc in documents[start : start + ENCODE_CHUNK]]
            for encoding in tok.encode_batch(texts, add_special_tokens=False):
                out.append(np.asarray([eot, *encoding.ids, eot], dtype=np.int32))
            bar.update(len(texts))
    return out


def _pack_split(config: Any):
    seq_len = int(config.data.seq_len)

    def pack(tok: tokenizers.Tokenizer, documents: list[list[str]], desc: str) -> np.ndarray:
        ids = encode_documents(tok, documents, desc=f"tokenizing {desc}")
        tokens, segments = pack_documents(ids, seq_len, pad_id=tokenizer_lib.end_of_text_id(tok))
        return np.stack([tokens, segments], axis=1)  # [N, 2, L]

    return pack


def build_clm_data(config: Any) -> TaskData:
    """Builds (or loads from the data dir cache) the causal-LM train loader and eval batches."""
    seq_len, vocab = int(config.data.seq_len), int(config.model.vocab_size)
    prepared = prepare_tokenized_corpus(
        config,
        tokenizer_kind="byte_bpe",
        tokenizer_file=os.path.basename(tokenizer_path(config)),
        train_tokenizer=tokenizer_lib.train_or_load_byte_bpe,
        cache_prefix=f"clm-seq{seq_len}-bpe{vocab}",
        pack_split=_pack_split(config),
        example_shape=(2, seq_len),
    )
    path = prepared.provenance["tokenizer"]["path"]
    eot = tokenizer_lib.end_of_text_id(prepared.tokenizer, path)
    tokenizer_lib.check_ids_fit((eot,), vocab, path)
    batch_size = int(config.train.batch_size)
    train = make_loader(
        prepared.arrays["train"], _example, global_batch_size=batch_size, seed=int(config.seed)
    )
    eval_batches = fixed_batches(
        prepared.arrays["validation"],
        _example,
        batch_size=batch_size,
        num_batches=int(config.train.eval_batches),
        seed=int(config.seed),
    )
    return TaskData(
        train=train,
        eval_batches=eval_batches,
        provenance={**prepared.provenance, "seq_len": seq_len},
        tokenizer=prepared.tokenizer,
    )


def _example(row: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng  # causal-LM examples are not randomized
    row = np.asarray(row)
    return causal_lm_example(row[0], row[1])
