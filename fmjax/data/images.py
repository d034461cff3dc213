"""Image classification data: augmentation, normalization, train loader and full-split eval batches.

Datasets (config.data.dataset):
  "fashion_mnist"      28x28 grayscale, from the Debian package via the TFDS builder in
                       fmjax/data/corpora/fashion_mnist.py; train: random crop with zero padding
                       and horizontal flip; eval: the 10,000 test images as they are.
  "tfds:imagenet2012"  an ImageNet the user has already prepared with TFDS (array_record) under
                       data_dir/tfds; never downloaded. Train: Inception crop + flip; eval: resize
                       the short side to image_size * 256/224, center crop (needs pillow).
Augmentation randomness comes from the per-example rng of fmjax.data.pipeline, so every image's
crop and flip are a pure function of (seed, stream position).

data.validation_examples / data.train_examples / data.eval_split carve a validation split from
the train images and cut train to a seeded label budget (fmjax/data/label_splits.py), as the text
classifiers do. Self-supervised pretraining (fmjax/tasks/simclr.py) reads the same images as two
augmented views each, without labels (`build_view_data`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from fmjax.data.corpora import open_prepared_tfds, prepared_tfds_builder
from fmjax.data.label_splits import select_splits
from fmjax.data.pipeline import loader_options, make_loader
from fmjax.data.task_data import EvalBatches, TaskData
from fmjax.errors import ConfigError

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of the 60,000 training pixels in [0, 1]
IMAGENET_RESIZE_RATIO = 256 / 224  # eval: short side to 256 for a 224 crop (standard)
KNOWN_DATASETS = ("fashion_mnist", "tfds:<name> (e.g. tfds:imagenet2012)")


# --- augmentation and normalization (pure functions of an image and an rng) ---


def random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """An H x W crop of the image zero-padded by `padding` pixels on every side."""
    if padding <= 0:
        return image
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + height, left : left + width]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image mirrored left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def normalize(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 pixels -> float32 (x / 255 - mean) / std."""
    return ((image.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def fashion_mnist_example(
    example: dict, rng: np.random.Generator, *, train: bool, crop_padding: int, flip: bool
) -> dict[str, np.ndarray]:
    """One Fashion-MNIST example -> {"images" [28, 28, 1] float32, "labels", "weights"}."""
    image = np.asarray(example["image"], np.uint8)
    if train:
        image = random_crop(image, crop_padding, rng)
        if flip:
            image = random_flip(image, rng)
    return {
        "images": normalize(image, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        "labels": np.int32(example["label"]),
        "weights": np.float32(1.0),
    }


def jitter_brightness_contrast(
    image: np.ndarray, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """SimCLR's color jitter for grey images: brightness and contrast factors drawn from
    [1 - strength, 1 + strength], applied in a random order, pixels clipped to [0, 255]."""
    x = image.astype(np.float32)
    brightness, contrast = rng.uniform(1 - strength, 1 + strength, size=2)
    for op in rng.permutation(2):
        x = x * brightness if op == 0 else (x - x.mean()) * contrast + x.mean()
        x = np.clip(x, 0.0, 255.0)
    return x.astype(np.uint8)


def augmented_view(
    image: np.ndarray, rng: np.random.Generator, *, crop_area: tuple[float, float], jitter: float
) -> np.ndarray:
    """One SimCLR view of a uint8 image: random resized crop back to its size, flip, and (with
    probability 0.8, as SimCLR) brightness / contrast jitter."""
    height, width = image.shape[:2]
    top, left, crop_h, crop_w = inception_crop_box(height, width, rng, area_range=crop_area)
    view = _resize(image[top : top + crop_h, left : left + crop_w], height, width)
    view = random_flip(view, rng)
    if jitter > 0 and rng.random() < 0.8:
        view = jitter_brightness_contrast(view, jitter, rng)
    return view


def fashion_mnist_views(
    example: dict, rng: np.random.Generator, *, crop_area: tuple[float, float], jitter: float
) -> dict[str, np.ndarray]:
    """One Fashion-MNIST image -> two independently augmented views, normalized, no label."""
    image = np.asarray(example["image"], np.uint8)
    first, second = (
        augmented_view(image, rng, crop_area=crop_area, jitter=jitter) for _ in range(2)
    )
    return {
        "first_views": normalize(first, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        "second_views": normalize(second, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        "weights": np.float32(1.0),
    }


def inception_crop_box(
    height: int, width: int, rng: np.random.Generator, area_range=(0.08, 1.0), attempts: int = 10
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of an Inception-style random resized crop."""
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(attempts):
        area = height * width * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(area * ratio)))
        crop_h = int(round(math.sqrt(area / ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    side = min(height, width)  # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    grey = image.ndim == 3 and image.shape[-1] == 1  # PIL takes grey images as [H, W]
    resized = Image.fromarray(image[..., 0] if grey else image).resize(
        (width, height), Image.BILINEAR
    )
    return np.asarray(resized, np.uint8).reshape(height, width, -1)


def imagenet_example(
    example: dict, rng: np.random.Generator, *, train: bool, image_size: int
) -> dict[str, np.ndarray]:
    """One decoded ImageNet example -> {"images" [S, S, 3] float32 in [-1, 1], "labels", ...}."""
    image = np.asarray(example["image"], np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    height, width = image.shape[:2]
    if train:
        top, left, crop_h, crop_w = inception_crop_box(height, width, rng)
        image = _resize(image[top : top + crop_h, left : left + crop_w], image_size, image_size)
        image = random_flip(image, rng)
    else:
        short = int(round(image_size * IMAGENET_RESIZE_RATIO))
        scale = short / min(height, width)
        new_h, new_w = max(short, round(height * scale)), max(short, round(width * scale))
        image = _resize(image, new_h, new_w)
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        image = image[top : top + image_size, left : left + image_size]
    return {
        "images": (image.astype(np.float32) / 127.5 - 1.0).astype(np.float32),  # big_vision range
        "labels": np.int32(example["label"]),
        "weights": np.float32(1.0),
    }


# --- datasets ---


class Rows:
    """The examples of `source` at `indices`, in that order (a split carved from another)."""

    def __init__(self, source: Any, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]


def _data_dir(config: Any) -> str:
    return os.path.expanduser(str(config.data.data_dir))


def _fashion_mnist(config: Any) -> tuple[Any, Any, Callable, Callable, dict, int]:
    from fmjax.data.corpora.fashion_mnist import CLASS_NAMES, IMAGE_SHAPE, FashionMnist

    if int(config.data.image_size) != IMAGE_SHAPE[0]:
        raise ConfigError(
            f"data.image_size={config.data.image_size}, but Fashion-MNIST images are 28x28; "
            "set --config.data.image_size=28 (and model.image_size=28)"
        )
    source_dir = os.path.expanduser(str(config.data.get("source_dir", "") or ""))
    builder = prepared_tfds_builder(FashionMnist, _data_dir(config), source_dir)
    augment = dict(
        crop_padding=int(config.data.get("crop_padding", 4)),
        flip=bool(config.data.get("random_flip", True)),
    )
    provenance = {
        "dataset": "fashion_mnist",
        **dict(builder.info.metadata),
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "augmentation": augment,
    }
    return (
        builder.as_data_source(split="train"),
        builder.as_data_source(split="test"),
        functools.partial(fashion_mnist_example, train=True, **augment),
        functools.partial(fashion_mnist_example, train=False, **augment),
        provenance,
        len(CLASS_NAMES),
    )


def _tfds_images(config: Any, tfds_name: str) -> tuple[Any, Any, Callable, Callable, dict, int]:
    tfds_dir = os.path.join(_data_dir(config), "tfds")
    hint = (
        f"fmjax never downloads it: prepare it yourself, e.g. 'tfds build {tfds_name} "
        f"--data_dir={tfds_dir} --file_format=array_record' (ImageNet needs the manual "
        "download), or set --config.data.data_dir to the folder whose tfds/ holds it"
    )
    builder = open_prepared_tfds(tfds_name, tfds_dir, ("image", "label"), hint)
    features = builder.info.features
    eval_split = next((s for s in ("validation", "test") if s in builder.info.splits), None)
    if eval_split is None or "train" not in builder.info.splits:
        raise ConfigError(f"TFDS dataset {tfds_name!r} needs a train and a validation/test split")
    try:
        import PIL  # noqa: F401 - TFDS decodes JPEGs with pillow (or OpenCV) without TensorFlow
    except ImportError as e:
        raise ConfigError(f"decoding {tfds_name} images needs pillow: pip install pillow") from e
    try:
        train_source = builder.as_data_source(split="train")
        eval_source = builder.as_data_source(split=eval_split)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"TFDS dataset {tfds_name!r} cannot be read as array_record; {hint}"
        ) from e
    image_size = int(config.data.image_size)
    provenance = {
        "dataset": f"tfds:{tfds_name}",
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "eval_split": eval_split,
        "num_train_examples": len(train_source),
        "num_eval_examples": len(eval_source),
    }
    return (
        train_source,
        eval_source,
        functools.partial(imagenet_example, train=True, image_size=image_size),
        functools.partial(imagenet_example, train=False, image_size=image_size),
        provenance,
        int(features["label"].num_classes),
    )


def build_image_data(config: Any) -> TaskData:
    """The train loader, the full eval split in fixed batches, and provenance for config.data."""
    name = str(config.data.get("dataset", ""))
    if name == "fashion_mnist":
        parts = _fashion_mnist(config)
    elif name.startswith("tfds:") and len(name) > 5:
        parts = _tfds_images(config, name[5:])
    else:
        raise ConfigError(
            f"unknown data.dataset={name!r}; known datasets: {', '.join(KNOWN_DATASETS)}"
        )
    train_source, eval_source, train_transform, eval_transform, provenance, num_classes = parts
    model = config.model
    if int(model.num_classes) != num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes}, but {name} has {num_classes} classes; "
            f"set --config.model.num_classes={num_classes}"
        )
    if int(model.image_size) != int(config.data.image_size):
        raise ConfigError(
            f"model.image_size={model.image_size} differs from data.image_size="
            f"{config.data.image_size}; set both to the same size"
        )
    batch_size, seed = int(config.train.batch_size), int(config.seed)
    splits, eval_split, selection = select_splits(
        {"train": (np.arange(len(train_source)),), "test": (np.arange(len(eval_source)),)},
        config.data,
        seed,
    )
    provenance["splits"] = selection
    # The validation split is carved from the train images; "test" is the dataset's own.
    held_out_source = eval_source if eval_split == "test" else train_source
    held_out = Rows(held_out_source, splits[eval_split][0])
    train = make_loader(
        Rows(train_source, splits["train"][0]),
        train_transform,
        global_batch_size=batch_size,
        seed=seed,
        **loader_options(config),
    )
    # Eval takes no randomness, but the transform signature carries an rng all the same.
    eval_batches = EvalBatches(held_out, eval_transform, batch_size, seed)
    provenance["num_eval_batches"] = len(eval_batches)
    return TaskData(train=train, eval_batches=eval_batches, provenance=provenance)


def build_view_data(config: Any) -> TaskData:
    """Two augmented views of every train image (no labels) and of every test image (seeded,
    so eval sees the same views each time), for self-supervised pretraining."""
    if str(config.data.get("dataset", "")) != "fashion_mnist":
        raise ConfigError(
            f"data.dataset={config.data.get('dataset', '')!r}: self-supervised views are "
            "implemented for grey images; use data.dataset=fashion_mnist"
        )
    train_source, eval_source, _, _, provenance, _ = _fashion_mnist(config)
    augment = dict(
        crop_area=(float(config.data.crop_area_min), 1.0), jitter=float(config.data.jitter)
    )
    provenance["augmentation"] = {"views": 2, **augment}
    transform = functools.partial(fashion_mnist_views, **augment)
    batch_size, seed = int(config.train.batch_size), int(config.seed)
    train = make_loader(
        train_source, transform, global_batch_size=batch_size, seed=seed, **loader_options(config)
    )
    eval_batches = EvalBatches(eval_source, transform, batch_size, seed)
    provenance["num_eval_batches"] = len(eval_batches)
    return TaskData(train=train, eval_batches=eval_batches, provenance=provenance)
