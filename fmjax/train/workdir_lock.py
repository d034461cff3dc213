"""One run per workdir: an advisory lock the OS releases when the process dies (kill -9 too)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from fmjax.errors import ConfigError


class WorkdirLock:
    """Holds an exclusive flock on workdir/.lock for the life of the run.

    In a multi-process job only process 0 takes the lock (the workdir is shared by all of
    them) and every process learns whether it got it, so all fail together when another
    run holds it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self) -> WorkdirLock:
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except ConfigError as e:
                error = e
        if jax.process_count() > 1:
            held = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
            if not held and error is None:
                error = ConfigError(
                    f"workdir {os.path.dirname(self.path)} is in use by another fmjax run "
                    "(process 0 could not lock it); wait for it or use another --workdir"
                )
        if error is not None:
            raise error
        return self

    def _acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise ConfigError(
                f"workdir {os.path.dirname(self.path)} is in use by another fmjax run "
                f"(pid {holder}); wait for it to finish or use another --workdir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextlib.contextmanager
def one_process_at_a_time(directory: str, name: str = ".prepare.lock") -> Iterator[None]:
    """Waits for, then holds, an exclusive flock on directory/name.

    The processes of a multi-process job on one machine prepare the same data dir in turn:
    the first builds the cache, the others then read it.
    """
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
