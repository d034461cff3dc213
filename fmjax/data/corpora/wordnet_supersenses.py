"""TFDS builder: WordNet 3.0 glosses labeled with their supersense, from Debian `wordnet-base`.

Each line of /usr/share/wordnet/data.{noun,verb,adj,adv} is one synset:
`offset lex_filenum ss_type w_cnt word lex_id ... | gloss`. The label is lex_filenum, the
lexicographer file (supersense) the synset was written in: 45 classes whose names WordNet keeps in
a `lexnames` file that the Debian package does not ship (LEXNAMES below, in lex_filenum order).
The input text is the gloss (definition and examples), without the synset's words. About 10% of
the glosses, chosen by a hash of the gloss, are held out as the test split (identical glosses land
on the same side).
"""

from __future__ import annotations

import os
import urllib.parse

import tensorflow_datasets as tfds

from fmjax.data.corpora import is_validation
from fmjax.data.corpora.base import LabeledTextBuilder
from fmjax.errors import ConfigError

PACKAGE = "wordnet-base"
PACKAGE_DIR = "usr/share/wordnet"
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TEST_FRACTION = 0.10
# WordNet 3.0 lexnames(5WN): lex_filenum -> lexicographer file name.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip


def synset_glosses(data_text: str, pos: str) -> list[dict]:
    """{"text", "label", "synset"} of every synset line of a WordNet data.<pos> file."""
    rows = []
    for line in data_text.split("\n"):
        if not line or line.startswith(" ") or " | " not in line:  # license header, blanks
            continue
        fields, gloss = line.split(" | ", 1)
        parts = fields.split()
        lex_filenum = int(parts[1])
        if not 0 <= lex_filenum < len(LEXNAMES):
            raise ConfigError(f"data.{pos} line {parts[0]} has lex_filenum {lex_filenum} > 44")
        gloss = " ".join(gloss.split())
        if gloss:
            rows.append({"text": gloss, "label": lex_filenum, "synset": f"{parts[0]}-{pos}"})
    return rows


def is_test_gloss(gloss: str) -> bool:
    """Whether a gloss is in the test split (a stable hash of its text)."""
    return is_validation(f"wordnet/{gloss}", TEST_FRACTION)


class WordnetSupersenses(LabeledTextBuilder):
    """WordNet glosses: {"text", "label" (one of the 45 LEXNAMES), "synset" (offset-pos)}."""

    name = "fmjax_wordnet_supersenses"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Glosses of wordnet-base labeled by lex_filenum; 10% held out."}
    CLASS_NAMES = LEXNAMES
    ID_FIELD = "synset"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.labeled_text_info(
            description="WordNet 3.0 glosses and their supersense (lexicographer file).",
            homepage="https://packages.debian.org/wordnet-base",
            license="WordNet 3.0 license",
        )

    def _data_folder(self) -> tuple[str, dict]:
        """The folder of the data.* files and their provenance (package, version, sha256)."""
        local = self.local_copy(PACKAGE, list(DATA_FILES))
        if local is not None:
            return self._source_dir, local
        extract_dir, provenance = self.extract_debian(
            PACKAGE,
            os.path.join(PACKAGE_DIR, DATA_FILES[0]),
            "point data.source_dir at a folder holding data.{noun,verb,adj,adv}",
        )
        # apt names the file with the version's epoch "1:" written as "1%3a"
        provenance["version"] = urllib.parse.unquote(provenance["version"])
        return os.path.join(extract_dir, PACKAGE_DIR), provenance

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        folder, provenance = self._data_folder()
        rows = []
        for name in DATA_FILES:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                rows.extend(synset_glosses(f.read(), name.split(".")[1]))
        if not rows:
            raise ConfigError(f"{folder} holds no synsets; re-fetch {PACKAGE}")
        return self.train_test_splits(
            [(row["synset"], row) for row in rows],
            lambda row: is_test_gloss(row["text"]),
            provenance,
            test_fraction=TEST_FRACTION,
        )
