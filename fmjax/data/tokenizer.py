"""Train once / load WordPiece (BERT) and byte-level BPE (GPT) tokenizers with HF `tokenizers`."""

from __future__ import annotations

import os
from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from fmjax.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
WORDPIECE_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# Fixed ids: the trainer's special tokens come first in the vocabulary, in this order.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
WORDPIECE_IDS = {token: i for i, token in enumerate(WORDPIECE_SPECIAL_TOKENS)}
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 0


def train_or_load_wordpiece(
    texts: Iterable[str], vocab_size: int, path: str
) -> tokenizers.Tokenizer:
    """BERT WordPiece (lowercased) trained on texts and saved at path; loaded if path exists."""
    if os.path.exists(path):
        tok = tokenizers.Tokenizer.from_file(path)
        _check_ids(tok, WORDPIECE_IDS, path)
        return tok
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=True, clean_text=True, handle_chinese_chars=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(WORDPIECE_SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, CLS_ID), (SEP, SEP_ID)],
    )
    _check_ids(tok, WORDPIECE_IDS, path)
    _save(tok, path)
    return tok


def train_or_load_byte_bpe(
    texts: Iterable[str], vocab_size: int, path: str
) -> tokenizers.Tokenizer:
    """GPT-2 style byte-level BPE (special <|endoftext|> = 0) trained once, saved at path."""
    if os.path.exists(path):
        tok = tokenizers.Tokenizer.from_file(path)
        _check_ids(tok, {END_OF_TEXT: END_OF_TEXT_ID}, path)
        return tok
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _check_ids(tok, {END_OF_TEXT: END_OF_TEXT_ID}, path)
    _save(tok, path)
    return tok


def _check_ids(tok: tokenizers.Tokenizer, expected: dict[str, int], path: str) -> None:
    for token, token_id in expected.items():
        if tok.token_to_id(token) != token_id:
            raise ConfigError(
                f"tokenizer {path}: {token} has id {tok.token_to_id(token)}, "
                f"expected {token_id}; delete the file to retrain it"
            )


def _save(tok: tokenizers.Tokenizer, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, path)
