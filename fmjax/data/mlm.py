"""Masked-LM data for BERT: corpus -> WordPiece -> packed sequences (cached) -> masked batches."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tokenizers
import tqdm

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.pipeline import fixed_batches, make_loader
from fmjax.data.prepared import prepare_tokenized_corpus
from fmjax.data.task_data import TaskData
from fmjax.data.text import mask_for_mlm, pack_sentences

ENCODE_CHUNK = 8192  # sentences per encode_batch call (one progress-bar tick)
EVAL_SEED_OFFSET = 1_000_003  # eval masking uses its own stream, fixed for the whole run


def encode_documents(
    tok: tokenizers.Tokenizer, documents: list[list[str]], desc: str
) -> list[list[list[int]]]:
    """Token ids (no special tokens) of every sentence of every document."""
    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    with tqdm.tqdm(total=len(flat), desc=f"tokenizing {desc}", unit="sent", mininterval=1.0) as bar:
        for start in range(0, len(flat), ENCODE_CHUNK):
            chunk = flat[start : start + ENCODE_CHUNK]
            ids.extend(e.ids for e in tok.encode_batch(chunk, add_special_tokens=False))
            bar.update(len(chunk))
    out, pos = [], 0
    for doc in documents:
        out.append(ids[pos : pos + len(doc)])
        pos += len(doc)
    return out


def _pack_split(config: Any):
    seq_len = int(config.data.seq_len)

    def pack(tok: tokenizers.Tokenizer, documents: list[list[str]], desc: str) -> np.ndarray:
        special = tokenizer_lib.wordpiece_special_ids(tok)
        ids = encode_documents(tok, documents, desc)
        return pack_sentences(ids, seq_len, special.cls, special.sep, special.pad)

    return pack


def build_mlm_data(config: Any) -> TaskData:
    """Builds (or loads from the data dir cache) the MLM train loader and fixed eval batches."""
    seq_len, vocab = int(config.data.seq_len), int(config.model.vocab_size)
    prepared = prepare_tokenized_corpus(
        config,
        tokenizer_kind="wordpiece",
        tokenizer_file=f"wordpiece-{vocab}.json",
        train_tokenizer=tokenizer_lib.train_or_load_wordpiece,
        cache_prefix=f"mlm-seq{seq_len}-wp{vocab}",
        pack_split=_pack_split(config),
        example_shape=(seq_len,),
    )
    special = tokenizer_lib.wordpiece_special_ids(
        prepared.tokenizer, prepared.provenance["tokenizer"]["path"]
    )
    tokenizer_lib.check_ids_fit(special.all(), vocab, prepared.provenance["tokenizer"]["path"])
    transform = functools.partial(
        _mask_transform,
        special=special,
        mask_prob=float(config.task.mask_prob),
        max_predictions=int(config.task.max_predictions),
        vocab_size=prepared.vocab_size,
    )
    batch_size = int(config.train.batch_size)
    train = make_loader(
        prepared.arrays["train"], transform, global_batch_size=batch_size, seed=int(config.seed)
    )
    eval_batches = fixed_batches(
        prepared.arrays["validation"],
        transform,
        batch_size=batch_size,
        num_batches=int(config.train.eval_batches),
        seed=int(config.seed) + EVAL_SEED_OFFSET,
    )
    return TaskData(
        train=train,
        eval_batches=eval_batches,
        provenance={**prepared.provenance, "seq_len": seq_len},
        tokenizer=prepared.tokenizer,
    )


def _mask_transform(
    example: np.ndarray,
    rng: np.random.Generator,
    *,
    special: tokenizer_lib.WordpieceIds,
    mask_prob: float,
    max_predictions: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    return mask_for_mlm(
        np.asarray(example),
        rng,
        mask_prob=mask_prob,
        max_predictions=max_predictions,
        mask_id=special.mask,
        vocab_size=vocab_size,
        special_ids=special.all(),
        pad_id=special.pad,
    )
