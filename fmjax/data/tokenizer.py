"""Train once / load WordPiece (BERT) and byte-level BPE (GPT) tokenizers with HF `tokenizers`,
and look up their special-token ids.

Tokenizers fmjax trains put [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4 (<|endoftext|> at 0);
published ones do not (bert-base-uncased: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103;
GPT-2: <|endoftext|>=50256). The data pipeline, generation and export therefore take every
special id from the tokenizer itself (`wordpiece_special_ids`, `end_of_text_id`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from fmjax.data.corpora import sha256_file
from fmjax.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
WORDPIECE_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# The ids of the tokenizers fmjax trains: its special tokens come first, in this order.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
WORDPIECE_IDS = {token: i for i, token in enumerate(WORDPIECE_SPECIAL_TOKENS)}
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 0


@dataclasses.dataclass(frozen=True)
class WordpieceIds:
    """The ids of [PAD] [UNK] [CLS] [SEP] [MASK] in one WordPiece tokenizer."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def all(self) -> tuple[int, ...]:
        """Every special id (never masked, never a random replacement)."""
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


FMJAX_WORDPIECE_IDS = WordpieceIds(PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)


def wordpiece_special_ids(tok: tokenizers.Tokenizer, source: str = "") -> WordpieceIds:
    """The special-token ids of a BERT tokenizer; ConfigError if one of the five is missing."""
    ids = {token: tok.token_to_id(token) for token in WORDPIECE_SPECIAL_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise ConfigError(
            f"tokenizer {source or '(given)'} has no {' '.join(missing)} token; a BERT tokenizer "
            f"needs all of {' '.join(WORDPIECE_SPECIAL_TOKENS)}"
        )
    return WordpieceIds(*(ids[token] for token in WORDPIECE_SPECIAL_TOKENS))


def end_of_text_id(tok: tokenizers.Tokenizer, source: str = "") -> int:
    """The id of <|endoftext|> in a GPT tokenizer; ConfigError if it has none."""
    token_id = tok.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise ConfigError(
            f"tokenizer {source or '(given)'} has no {END_OF_TEXT} token; a GPT tokenizer needs "
            "it to separate and end documents"
        )
    return token_id


def check_ids_fit(ids: tuple[int, ...], vocab_size: int, source: str) -> None:
    """ConfigError if a special id is outside the model's vocabulary (checked once per run)."""
    if max(ids) >= vocab_size:
        raise ConfigError(
            f"tokenizer {source} has special id {max(ids)} >= model.vocab_size={vocab_size}; use "
            "the vocab_size of the model the tokenizer belongs to"
        )


def load_tokenizer_file(path: str, field: str = "data.tokenizer_file") -> tokenizers.Tokenizer:
    """A tokenizer.json a user names (any special ids); ConfigError naming `field` if unreadable."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"{field}={path} does not exist; point it at the tokenizer.json the model was "
            "trained with (or set it to '')"
        )
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's path
        raise ConfigError(
            f"{field}={path} is not a tokenizers JSON file ({type(error).__name__}); convert a "
            "vocab.txt with python -m fmjax.tools.import_hf"
        ) from None


def pretrained_tokenizer_path(config) -> str:
    """The tokenizer a run must use: data.tokenizer_file, else the tokenizer of the workdir
    data.tokenizer_from, else that of train.init_from; '' when none is set (then one is
    trained). A user who names a tokenizer always wins over the pretrained run's."""
    given = os.path.expanduser(str(config.data.get("tokenizer_file", "") or ""))
    if given:
        load_tokenizer_file(given)  # the error names data.tokenizer_file
        return given
    for field, source in (
        ("data.tokenizer_from", config.data.get("tokenizer_from", "")),
        ("train.init_from", config.train.get("init_from", "")),
    ):
        if source:
            from fmjax.params_io import resolve_checkpoint

            workdir, _, step = resolve_checkpoint(str(source), field=field)
            return tokenizer_of(workdir, step)[1]
    return ""


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


def tokenizer_provenance(tok: tokenizers.Tokenizer, path: str, kind: str) -> dict:
    """What manifest.json records of a tokenizer: its file, sha256 (checked on resume), kind
    ("wordpiece" or "byte_bpe") and vocabulary size."""
    return {
        "path": path,
        "sha256": sha256_file(path),
        "kind": kind,
        "vocab_size": tok.get_vocab_size(),
    }


def tokenizer_of(workdir: str, step: int | None = None) -> tuple[tokenizers.Tokenizer, str]:
    """The run's HF tokenizer (path from manifest.json), checked against the checkpoint's sha256."""
    manifest_path = os.path.join(workdir, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    path = ((manifest.get("data") or {}).get("tokenizer") or {}).get("path")
    own_copy = os.path.join(workdir, "tokenizer.json")  # import_hf's; follows a moved workdir
    if (not path or not os.path.exists(path)) and os.path.exists(own_copy):
        path = own_copy
    if not path:
        raise ConfigError(f"{workdir}/manifest.json names no tokenizer (a text model's run?)")
    if not os.path.exists(path):
        raise ConfigError(
            f"tokenizer {path} of {workdir} is missing; restore it (or point "
            "manifest.json's data.tokenizer.path at a copy)"
        )
    if step is not None:
        from fmjax.params_io import checkpoint_data_state  # orbax: only when a step is given

        expected = checkpoint_data_state(workdir, step).get("tokenizer_sha256")
        if expected and sha256_file(path) != expected:
            raise ConfigError(
                f"tokenizer {path} is not the one checkpoint step {step} was trained with "
                f"(sha256 {expected[:12]}...); restore the original tokenizer file"
            )
    return tokenizers.Tokenizer.from_file(path), path
