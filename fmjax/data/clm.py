"""Causal-LM data for GPT: prepared byte-BPE-packed shards (fmjax.data.preparation) -> batches."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tokenizers

from fmjax.data import preparation
from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.task_data import TaskData
from fmjax.data.text import causal_lm_example
from fmjax.errors import ConfigError


def tokenizer_path(config: Any) -> str:
    """Where the byte-level BPE of config.data.corpus at config.model.vocab_size is saved."""
    return preparation.tokenizer_path(config, "clm")


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


def encode_documents(tok: tokenizers.Tokenizer, documents: list[list[str]]) -> list[np.ndarray]:
    """Token ids of each document (lines joined by newlines) framed as <|endoftext|> doc <|eot|>.

    The leading end-of-text token lets a prompt-less model start a document; the trailing one
    lets it end one. The tokenizer's own <|endoftext|> id frames them.
    """
    eot = tokenizer_lib.end_of_text_id(tok)
    texts = ["\n".join(doc) for doc in documents]
    return [
        np.asarray([eot, *encoding.ids, eot], dtype=np.int32)
        for encoding in tok.encode_batch(texts, add_special_tokens=False)
    ]


def build_clm_data(config: Any) -> TaskData:
    """Builds (or loads from the data dir cache) the causal-LM train loader and eval batches."""
    prepared = preparation.prepare_text(config, "clm")
    path = prepared.provenance["tokenizer"]["path"]
    eot = tokenizer_lib.end_of_text_id(prepared.tokenizer, path)
    tokenizer_lib.check_ids_fit((eot,), int(config.model.vocab_size), path)
    return prepared.task_data(config, _batch_examples, _example, eval_seed=int(config.seed))


def _example(row: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng  # causal-LM examples are not randomized
    return causal_lm_example(row["input_ids"], row["segment_ids"])


def _batch_examples(rows: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, np.ndarray]:
    del positions  # causal-LM batches are not randomized
    return causal_lm_example(rows["input_ids"], rows["segment_ids"])  # the whole batch at once
