"""Workdir files on a local folder or an object store (gs://, s3://: any etils.epath path).

Object stores have no rename, no append and no flock: an object is written whole (readers see
the old one or the new one, never half), so a JSON file is written in one put there, and
through a temporary file plus os.replace on a local disk.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from etils import epath


def is_object_store(path: str | os.PathLike) -> bool:
    """True for a URI (gs://bucket/run, s3://...), False for a local (or mounted) path."""
    return "://" in os.fspath(path)


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an epath.Path: a URI as given, a local path made absolute."""
    text = os.fspath(workdir)
    if is_object_store(text):
        return epath.Path(text.rstrip("/"))
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def write_text(path: epath.Path, text: str) -> None:
    """Replaces `path` with `text` so that a reader never sees a half-written file."""
    if is_object_store(path):
        path.write_text(text)  # one object upload: it appears whole when complete
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: epath.Path, value: Any) -> None:
    """`value` as indented, key-sorted JSON at `path` (written whole, see write_text)."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: epath.Path) -> Any:
    """The JSON value stored at `path`."""
    return json.loads(path.read_text())


def move_tree(source: epath.Path, target: epath.Path) -> None:
    """Moves a folder (a checkpoint) to `target`; on an object store, object by object."""
    if is_object_store(source):
        import fsspec

        filesystem, source_name = fsspec.core.url_to_fs(os.fspath(source))
        filesystem.mv(source_name, fsspec.core.url_to_fs(os.fspath(target))[1], recursive=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(os.fspath(source), os.fspath(target))
