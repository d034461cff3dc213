"""TFDS builder: the GCIDE dictionary (Webster 1913 + additions) from Debian `dict-gcide`."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from collections.abc import Iterator

import tensorflow_datasets as tfds
import tqdm

from fmjax.config import ConfigError
from fmjax.data.corpora import fetch_debian_package, is_validation, sha256_file

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


class Gcide(tfds.core.GeneratorBasedBuilder):
    """GCIDE entries grouped into documents of 50 consecutive entries: {"title", "text"}."""

    name = "fmjax_gcide"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Entries of dict-gcide, 50 per document, 5% of documents held out."}
    _checksums_path = None  # files come from apt, not TFDS's download manager

    def __init__(self, *, source_dir: str = "", **kwargs):
        """source_dir: a folder holding dict-gcide_*.deb (skips apt-get download)."""
        self._source_dir = source_dir
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The Collaborative International Dictionary of English (GCIDE).",
            features=tfds.features.FeaturesDict(
                {"title": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            homepage="https://packages.debian.org/dict-gcide",
            metadata=tfds.core.MetadataDict(),
            license="GPL",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        download_dir = os.path.join(os.path.dirname(str(self.data_dir_root)), "downloads")
        deb = fetch_debian_package(PACKAGE, download_dir, self._source_dir)
        extract_dir = os.path.join(download_dir, "dict-gcide-extracted")
        if not os.path.exists(os.path.join(extract_dir, DICT_PATH)):
            proc = subprocess.run(
                ["dpkg-deb", "-x", deb, extract_dir], capture_output=True, text=True
            )
            if proc.returncode:
                raise ConfigError(
                    f"dpkg-deb -x {deb} failed ({proc.stderr.strip()}); "
                    "install dpkg or point data.source_dir at another copy"
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
        self.info.metadata.update(
            {
                "package": PACKAGE,
                "version": os.path.basename(deb)[len(PACKAGE) + 1 :].split("_")[0],
                "sha256": sha256_file(deb),
                "source_file": os.path.basename(deb),
                "num_entries": len(spans),
            }
        )
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
