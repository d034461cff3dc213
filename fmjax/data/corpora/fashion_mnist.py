"""TFDS builder: Fashion-MNIST (Xiao et al. 2017) from Debian package `dataset-fashion-mnist`."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from fmjax.data.corpora.base import PackageBuilder
from fmjax.errors import ConfigError

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
IMAGE_SHAPE = (28, 28, 1)
_IDX_UBYTE = 0x08  # the idx element type of unsigned bytes


def read_idx(path: str) -> np.ndarray:
    """The uint8 array stored in an idx file (gzipped or not): magic, dims, then raw bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise ConfigError(f"{path} is not an unsigned-byte idx file; re-fetch {PACKAGE}")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{path} holds {data.size} bytes, its header says {dims}; re-fetch it")
    return data.reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped idx file (the inverse of read_idx; used by tests)."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


class FashionMnist(PackageBuilder):
    """Fashion-MNIST: {"image": uint8 [28, 28, 1], "label": 10 classes}; train 60k / test 10k."""

    name = "fmjax_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "idx files of the Debian package dataset-fashion-mnist."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            description="Zalando's Fashion-MNIST: 28x28 grayscale images of 10 clothing classes.",
            features={
                # Tensor, not Image: Image encodes through TensorFlow, which we do not need.
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            },
            supervised_keys=("image", "label"),
            homepage="https://packages.debian.org/dataset-fashion-mnist",
            license="MIT",
        )

    def _idx_folder(self) -> tuple[str, dict]:
        """The folder of the idx files and their provenance (package, version, sha256)."""
        names = [name for pair in SPLIT_FILES.values() for name in pair]
        local = self.local_copy(PACKAGE, names)
        if local is not None:
            return self._source_dir, local
        extract_dir, provenance = self.extract_debian(
            PACKAGE,
            os.path.join(PACKAGE_DIR, names[0]),
            "point data.source_dir at a folder holding the four idx .gz files",
        )
        return os.path.join(extract_dir, PACKAGE_DIR), provenance

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        folder, provenance = self._idx_folder()
        splits = {}
        for split, (image_file, label_file) in SPLIT_FILES.items():
            images = read_idx(os.path.join(folder, image_file))
            labels = read_idx(os.path.join(folder, label_file))
            if (
                images.ndim != 3
                or images.shape[1:] != IMAGE_SHAPE[:2]
                or len(images) != len(labels)
            ):
                raise ConfigError(
                    f"{split} idx files hold images {images.shape} and labels {labels.shape}; "
                    f"expected [N, 28, 28] and [N]: re-fetch {PACKAGE}"
                )
            if labels.size and labels.max() >= len(CLASS_NAMES):
                raise ConfigError(f"{split} labels exceed {len(CLASS_NAMES) - 1}; re-fetch them")
            splits[split] = (images, labels)
            provenance[f"num_{split}_examples"] = len(labels)
        self.info.metadata.update(provenance)
        return {split: self._generate_examples(*arrays) for split, arrays in splits.items()}

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image[:, :, None], "label": int(label)}
