"""TFDS builder: the GCIDE dictionary (Webster 1913 + additions) from Debian `dict-gcide`."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds
import tqdm

from fmjax.data.corpora import is_validation
from fmjax.data.corpora.base import PackageBuilder

PACKAGE = "dict-gcide"
DICT_PATH = "usr/share/dictd/gcide.dict.dz"
INDEX_PATH = "usr/share/dictd/gcide.index"
ENTRIES_PER_DOCUMENT = 50
VALIDATION_FRACTION = 0.05

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SOURCE_TAG = re.compile(r"\[[^\[\]]*(?:Webster|WordNet|PJC|Century|Johnson|Source)[^\[\]]*\]")
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_ACCENTED = re.compile(r"\[[`'^=.~\"]{0,2}([A-Za-z]{1,2})[`'^=.~\"]{0,2}\]")
_CHAR_CODE = re.compile(r"\[(?:deg|frac\w*|root|sect|prime|dag|para|asterism)\]")


def _b64_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def entry_offsets(index_text: str) -> list[tuple[int, int]]:
    """Sorted unique (offset, length) of the dictd entries named in gcide.index."""
    spans = set()
    for line in index_text.split("\n"):
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-"):
            spans.add((_b64_number(parts[1]), _b64_number(parts[2])))
    return sorted(spans)


def clean_entry(text: str) -> list[str]:
    """Paragraphs of one entry with source tags, pronunciation and markup removed."""
    text = _SOURCE_TAG.sub(" ", text)
    text = _PRONUNCIATION.sub(" ", text)
    text = _ACCENTED.sub(r"\1", text)
    text = _CHAR_CODE.sub(" ", text)
    text = text.replace("{", "").replace("}", "").replace("\ufffd", "")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        para = re.sub(r"\s+", " ", block).strip()
        if para and re.search(r"[A-Za-z]", para):
            paragraphs.append(para)
    return paragraphs


class Gcide(PackageBuilder):
    """GCIDE entries grouped into documents of 50 consecutive entries: {"title", "text"}."""

    name = "fmjax_gcide"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Entries of dict-gcide, 50 per document, 5% of documents held out."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            description="The Collaborative International Dictionary of English (GCIDE).",
            features={"title": tfds.features.Text(), "text": tfds.features.Text()},
            homepage="https://packages.debian.org/dict-gcide",
            license="GPL",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        extract_dir, provenance = self.extract_debian(
            PACKAGE, DICT_PATH, "install dpkg or point data.source_dir at another copy"
        )
        with gzip.open(os.path.join(extract_dir, DICT_PATH)) as f:
            raw = f.read()
        with open(os.path.join(extract_dir, INDEX_PATH), encoding="utf-8", errors="replace") as f:
            spans = entry_offsets(f.read())
        documents: list[tuple[str, list[str]]] = []
        paragraphs: list[str] = []
        num_entries, title = 0, ""
        for offset, length in tqdm.tqdm(spans, desc="gcide entries", unit="entry", mininterval=1.0):
            entry = clean_entry(raw[offset : offset + length].decode("utf-8", "replace"))
            if not entry:
                continue
            title = title or entry[0].split(",")[0][:80]
            paragraphs.extend(entry)
            num_entries += 1
            if num_entries == ENTRIES_PER_DOCUMENT:
                documents.append((title, paragraphs))
                paragraphs, num_entries, title = [], 0, ""
        if paragraphs:
            documents.append((title, paragraphs))
        self.info.metadata.update(provenance, num_entries=len(spans))
        keyed = [(f"{i:06d}", t, e) for i, (t, e) in enumerate(documents)]
        return {
            "train": self._generate_examples(
                [k for k in keyed if not is_validation(k[0], VALIDATION_FRACTION)]
            ),
            "validation": self._generate_examples(
                [k for k in keyed if is_validation(k[0], VALIDATION_FRACTION)]
            ),
        }

    def _generate_examples(
        self, docs: list[tuple[str, str, list[str]]]
    ) -> Iterator[tuple[str, dict]]:
        for key, title, paragraphs in docs:
            yield key, {"title": title, "text": "\n".join(paragraphs)}
