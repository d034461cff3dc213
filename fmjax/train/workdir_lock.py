"""One run per workdir: an advisory lock the OS releases when the process dies (kill -9 too)."""

from __future__ import annotations

import fcntl
import os

from fmjax.config import ConfigError


class WorkdirLock:
    """Holds an exclusive flock on workdir/.lock for the life of the run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self) -> WorkdirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise ConfigError(
                f"workdir {os.path.dirname(self.path)} is in use by another fmjax run "
                f"(pid {holder}); wait for it to finish or use another --workdir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
