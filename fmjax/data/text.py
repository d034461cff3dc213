"""Text preprocessing in numpy: sentence packing, MLM masking, causal-LM document packing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_sentences(
    documents: list[list[list[int]]], seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> np.ndarray:
    """Packs consecutive sentences of each document into [CLS] ... [SEP] [PAD]* rows [N, L]."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3, got {seq_len}")
    room = seq_len - 2
    rows: list[list[int]] = []
    for document in documents:
        current: list[int] = []
        for sentence in document:
            for start in range(0, len(sentence), room):
                chunk = list(sentence[start : start + room])
                if current and len(current) + len(chunk) > room:
                    rows.append(current)
                    current = []
                current.extend(chunk)
        if current:
            rows.append(current)
    out = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
    for i, tokens in enumerate(rows):
        out[i, 0] = cls_id
        out[i, 1 : len(tokens) + 1] = tokens
        out[i, len(tokens) + 1] = sep_id
    return out


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


def pack_documents(
    documents: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Packs token documents into rows [N, L]: (token ids, segment ids 1..n per row, 0 = pad).

    A document longer than seq_len is cut into seq_len chunks, each its own segment; a chunk
    that does not fit in the current row's remaining room starts a new row (the rest is padding).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    rows: list[list[Sequence[int]]] = []
    current: list[Sequence[int]] = []
    used = 0
    for document in documents:
        for start in range(0, len(document), seq_len):
            chunk = document[start : start + seq_len]
            if current and used + len(chunk) > seq_len:
                rows.append(current)
                current, used = [], 0
            current.append(chunk)
            used += len(chunk)
    if current:
        rows.append(current)
    tokens = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
    segments = np.zeros((len(rows), seq_len), dtype=np.int32)
    for i, chunks in enumerate(rows):
        position = 0
        for segment, chunk in enumerate(chunks, start=1):
            tokens[i, position : position + len(chunk)] = chunk
            segments[i, position : position + len(chunk)] = segment
            position += len(chunk)
    return tokens, segments


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
