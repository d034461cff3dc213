"""Image-text pair data for contrastive pretraining: emoji images with their Unicode names.

Train: a seeded, step-indexed loader (fmjax.data.pipeline) of images with a light augmentation
(a random crop of the image padded with its edge pixels) and captions tokenized by a WordPiece
trained on the train captions (saved with the data) and padded to data.seq_len. Eval: the whole
held-out split in order, un-augmented, plus one text prompt per zero-shot class.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.data.corpora import prepared_tfds_builder
from fmjax.data.images import normalize
from fmjax.data.pipeline import loader_options, make_loader
from fmjax.data.task_data import EvalBatches, TaskData
from fmjax.errors import ConfigError

KNOWN_DATASETS = ("emoji",)
ZERO_SHOT_TEMPLATE = "an emoji of a {}"
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # pixels to [-1, 1], as big_vision's image towers expect


def encode_texts(
    tok: tokenizers.Tokenizer,
    texts: Sequence[str],
    seq_len: int,
    special: tokenizer_lib.WordpieceIds = tokenizer_lib.FMJAX_WORDPIECE_IDS,
) -> np.ndarray:
    """int32 [N, seq_len]: [CLS] text [SEP], cut to seq_len (ending with [SEP]), [PAD]-padded
    (`special`: the tokenizer's ids, see tokenizer_lib.wordpiece_special_ids)."""
    ids = np.full((len(texts), seq_len), special.pad, np.int32)
    for row, encoding in enumerate(tok.encode_batch(list(texts))):
        tokens = encoding.ids
        if len(tokens) > seq_len:
            tokens = tokens[: seq_len - 1] + [special.sep]
        ids[row, : len(tokens)] = tokens
    return ids


def random_shift_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """An H x W crop of the image padded by `padding` copies of its edge pixels (white here)."""
    if padding <= 0:
        return image
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="edge")
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + height, left : left + width]


def pair_example(
    example: dict, rng: np.random.Generator, *, train: bool, crop_padding: int
) -> dict[str, np.ndarray]:
    """One pair -> {"images" float32 [H, W, 3], "input_ids" int32 [L], "labels" int32}."""
    image = np.asarray(example["image"], np.uint8)
    if train:
        image = random_shift_crop(image, crop_padding, rng)
    return {
        "images": normalize(image, PIXEL_MEAN, PIXEL_STD),
        "input_ids": np.asarray(example["input_ids"], np.int32),
        "labels": np.int32(example["label"]),
    }


class TokenizedPairs(Sequence):
    """A TFDS split's examples with their caption token ids attached (read on access)."""

    def __init__(self, source: Any, input_ids: np.ndarray):
        self.source, self.input_ids = source, input_ids

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.source[index])
        example["input_ids"] = self.input_ids[index]
        return example


def _captions(source: Any) -> list[str]:
    return [
        c.decode("utf-8") if isinstance(c, bytes) else str(c)
        for c in (source[i]["caption"] for i in range(len(source)))
    ]


def tokenizer_path(config: Any) -> str:
    """Where the WordPiece of the dataset's train captions at the text vocab size is saved."""
    data_dir = os.path.expanduser(str(config.data.data_dir))
    vocab = int(config.model.text.vocab_size)
    return os.path.join(data_dir, str(config.data.dataset), f"wordpiece-{vocab}.json")


def build_pair_data(config: Any) -> TaskData:
    """The train loader, the held-out split with zero-shot prompts, and provenance."""
    from fmjax.data.corpora.emoji import CLASS_NAMES, IMAGE_SIZE, OTHER_LABEL, Emoji

    name = str(config.data.get("dataset", ""))
    if name not in KNOWN_DATASETS:
        raise ConfigError(
            f"unknown data.dataset={name!r}; known image-text datasets: {', '.join(KNOWN_DATASETS)}"
        )
    image_size = int(config.model.image.image_size)
    if int(config.data.image_size) != IMAGE_SIZE or image_size != IMAGE_SIZE:
        raise ConfigError(
            f"data.image_size={config.data.image_size} and model.image.image_size={image_size}, "
            f"but the emoji are {IMAGE_SIZE}x{IMAGE_SIZE}; set both to {IMAGE_SIZE}"
        )
    seq_len, max_len = int(config.data.seq_len), int(config.model.text.max_seq_len)
    if seq_len > max_len:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model.text.max_seq_len={max_len}; raise "
            "model.text.max_seq_len or lower data.seq_len"
        )
    data_dir = os.path.expanduser(str(config.data.data_dir))
    source_dir = os.path.expanduser(str(config.data.get("source_dir", "") or ""))
    builder = prepared_tfds_builder(Emoji, data_dir, source_dir)
    sources = {split: builder.as_data_source(split=split) for split in ("train", "validation")}
    captions = {split: _captions(source) for split, source in sources.items()}

    vocab_size = int(config.model.text.vocab_size)
    path = tokenizer_path(config)
    tok = tokenizer_lib.train_or_load_wordpiece(captions["train"], vocab_size, path)
    if tok.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens > model.text.vocab_size="
            f"{vocab_size}; raise model.text.vocab_size or delete the tokenizer file"
        )
    special = tokenizer_lib.wordpiece_special_ids(tok, path)
    if special.pad != int(config.model.text.get("pad_id", 0)):
        raise ConfigError(
            f"tokenizer {path} has [PAD]={special.pad}; set --config.model.text.pad_id="
            f"{special.pad} so the text tower masks padding"
        )
    pairs = {
        split: TokenizedPairs(source, encode_texts(tok, captions[split], seq_len, special))
        for split, source in sources.items()
    }
    class_names = CLASS_NAMES[:OTHER_LABEL]
    prompts = [ZERO_SHOT_TEMPLATE.format(name) for name in class_names]
    crop_padding = int(config.data.get("crop_padding", 2))
    batch_size, seed = int(config.train.batch_size), int(config.seed)
    train = make_loader(
        pairs["train"],
        functools.partial(pair_example, train=True, crop_padding=crop_padding),
        global_batch_size=batch_size,
        seed=seed,
        **loader_options(config),
    )
    held_out = EvalBatches(
        pairs["validation"],
        functools.partial(pair_example, train=False, crop_padding=0),
        batch_size,
        seed,
    )
    truncated = int(sum(len(e.ids) > seq_len for e in tok.encode_batch(captions["train"])))
    provenance = {
        "dataset": name,
        **dict(builder.info.metadata),
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "augmentation": {"crop_padding": crop_padding},
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
        "num_truncated_train_captions": truncated,
        "tokenizer": tokenizer_lib.tokenizer_provenance(tok, path, "wordpiece"),
    }
    return TaskData(
        train=train,
        eval_batches=held_out,
        provenance=provenance,
        tokenizer=tok,
        class_names=class_names,
        class_prompt_ids=encode_texts(tok, prompts, seq_len),
    )
