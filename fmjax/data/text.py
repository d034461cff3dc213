"""Text preprocessing in numpy: sentence packing, MLM masking, causal-LM document packing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SentencePacker:
    """Packs the sentences of one document at a time into [CLS] ... [SEP] [PAD]* rows of seq_len.

    Consecutive sentences share a row while they fit; a sentence longer than the room is cut;
    rows never cross documents. Streaming form of `pack_sentences`.
    """

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
        """seq_len >= 3: every row holds [CLS], at least one token, [SEP]."""
        if seq_len < 3:
            raise ValueError(f"seq_len must be at least 3, got {seq_len}")
        self.seq_len, self.cls_id, self.sep_id, self.pad_id = seq_len, cls_id, sep_id, pad_id

    def rows(self, document: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The packed rows [L] int32 of one document (a list of sentences of token ids)."""
        room = self.seq_len - 2
        groups: list[list[int]] = []
        current: list[int] = []
        for sentence in document:
            for start in range(0, len(sentence), room):
                chunk = list(sentence[start : start + room])
                if current and len(current) + len(chunk) > room:
                    groups.append(current)
                    current = []
                current.extend(chunk)
        if current:
            groups.append(current)
        out = []
        for tokens in groups:
            row = np.full(self.seq_len, self.pad_id, dtype=np.int32)
            row[0] = self.cls_id
            row[1 : len(tokens) + 1] = tokens
            row[len(tokens) + 1] = self.sep_id
            out.append(row)
        return out


def pack_sentences(
    documents: list[list[list[int]]], seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> np.ndarray:
    """Packs consecutive sentences of each document into [CLS] ... [SEP] [PAD]* rows [N, L]."""
    packer = SentencePacker(seq_len, cls_id, sep_id, pad_id)
    rows = [row for document in documents for row in packer.rows(document)]
    return np.stack(rows) if rows else np.full((0, seq_len), pad_id, dtype=np.int32)


def mask_for_mlm(
    input_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float,
    max_predictions: int,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """BERT masking of one sequence [L]: 80% [MASK], 10% random token, 10% unchanged."""
    input_ids = np.asarray(input_ids, dtype=np.int32)
    specials = np.unique(np.asarray([*special_ids, pad_id], dtype=np.int32))
    candidates = np.flatnonzero(~np.isin(input_ids, specials))
    num = min(max_predictions, len(candidates), max(1, int(round(mask_prob * len(candidates)))))
    positions = np.sort(rng.choice(candidates, size=num, replace=False)) if num else candidates
    corrupted = input_ids.copy()
    action = rng.random(num)
    random_ids = rng.integers(0, vocab_size - len(specials[specials < vocab_size]), size=num)
    for special in specials:  # map [0, V - #special) onto the non-special ids, in order
        random_ids = random_ids + (random_ids >= special)
    corrupted[positions[action < 0.8]] = mask_id
    randomized = (action >= 0.8) & (action < 0.9)
    corrupted[positions[randomized]] = random_ids[randomized]

    masked_positions = np.zeros(max_predictions, np.int32)
    masked_ids = np.zeros(max_predictions, np.int32)
    masked_weights = np.zeros(max_predictions, np.float32)
    masked_positions[:num] = positions
    masked_ids[:num] = input_ids[positions]
    masked_weights[:num] = 1.0
    return {
        "input_ids": corrupted,
        "token_type_ids": np.zeros_like(corrupted),
        "attention_mask": (input_ids != pad_id).astype(np.int32),
        "masked_positions": masked_positions,
        "masked_ids": masked_ids,
        "masked_weights": masked_weights,
    }


class DocumentPacker:
    """Packs token documents into rows of seq_len with segment ids 1..n per row (0 = padding).

    A document longer than seq_len is cut into seq_len chunks, each its own segment; a chunk
    that does not fit in the current row's remaining room starts a new row (the rest is padding).
    Streaming form of `pack_documents`: `add` returns the rows it completed, `flush` the last.
    """

    def __init__(self, seq_len: int, pad_id: int = 0):
        """seq_len >= 2; pad_id fills the rest of a row."""
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.seq_len, self.pad_id = seq_len, pad_id
        self._current: list[Sequence[int]] = []
        self._used = 0

    def add(self, document: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Adds one document; returns the (tokens [L], segment ids [L]) rows it completed."""
        done = []
        for start in range(0, len(document), self.seq_len):
            chunk = document[start : start + self.seq_len]
            if self._current and self._used + len(chunk) > self.seq_len:
                done.append(self._row(self._current))
                self._current, self._used = [], 0
            self._current.append(chunk)
            self._used += len(chunk)
        return done

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The last, partly filled row (if any); the packer is empty afterwards."""
        done = [self._row(self._current)] if self._current else []
        self._current, self._used = [], 0
        return done

    def _row(self, chunks: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.full(self.seq_len, self.pad_id, dtype=np.int32)
        segments = np.zeros(self.seq_len, dtype=np.int32)
        position = 0
        for segment, chunk in enumerate(chunks, start=1):
            tokens[position : position + len(chunk)] = chunk
            segments[position : position + len(chunk)] = segment
            position += len(chunk)
        return tokens, segments


def pack_documents(
    documents: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Packs token documents into rows [N, L]: (token ids, segment ids 1..n per row, 0 = pad).

    See DocumentPacker, which this runs over all documents.
    """
    packer = DocumentPacker(seq_len, pad_id)
    rows = [row for document in documents for row in packer.add(document)] + packer.flush()
    if not rows:
        empty = np.zeros((0, seq_len), dtype=np.int32)
        return np.full_like(empty, pad_id), empty
    return np.stack([t for t, _ in rows]), np.stack([s for _, s in rows])


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """Positions [..., L] that restart at 0 at the first token of every segment (0 at padding)."""
    segment_ids = np.asarray(segment_ids)
    index = np.arange(segment_ids.shape[-1])
    starts = np.concatenate(
        [np.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]],
        axis=-1,
    )
    start_index = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    return np.where(segment_ids > 0, index - start_index, 0).astype(np.int32)


def causal_lm_example(tokens: np.ndarray, segment_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Next-token targets of a packed row: a token predicts the next one of its own segment.

    The last token of each segment and padding get loss weight 0 (nothing to predict there).
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    segment_ids = np.asarray(segment_ids, dtype=np.int32)
    targets = np.concatenate([tokens[1:], np.zeros(1, np.int32)])
    next_segment = np.concatenate([segment_ids[1:], np.zeros(1, np.int32)])
    weights = (segment_ids > 0) & (next_segment == segment_ids)
    return {
        "input_ids": tokens,
        "target_ids": np.where(weights, targets, 0).astype(np.int32),
        "segment_ids": segment_ids,
        "positions": segment_positions(segment_ids),
        "loss_weights": weights.astype(np.float32),
    }
