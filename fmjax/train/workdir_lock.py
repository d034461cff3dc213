"""One run per workdir: flock on a local disk, a leased lock object on an object store.

Local (or mounted) workdirs: an exclusive flock on workdir/.lock, which the OS releases when the
process dies (kill -9 too).

Object stores (gs://...) have no flock. There workdir/.lock is a small JSON object created only
if absent (a generation-match precondition, atomic on GCS) and holding its owner and the time it
was last renewed. The run renews it every lease/5 seconds from a background thread and deletes
it when it ends. A lock not renewed for LEASE_SECONDS belongs to a run that died (kill -9, a
lost VM): the next run takes it over. So after a kill -9 the workdir stays locked for up to
LEASE_SECONDS; a run that stops cleanly (SIGTERM, preemption, the end) frees it at once. If a
run finds its lock taken by another one, it stops (KeyboardInterrupt in the main thread).
"""

from __future__ import annotations

import _thread
import fcntl
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from fmjax.errors import ConfigError
from fmjax.train.storage import is_object_store, workdir_path

LEASE_SECONDS = 300.0  # an object-store lock not renewed for this long is a dead run's


class WorkdirLock:
    """Holds workdir/.lock for the life of the run (a context manager).

    In a multi-process job only process 0 takes the lock (the workdir is shared by all of
    them) and every process learns whether it got it, so all fail together when another
    run holds it.
    """

    def __init__(self, workdir: str, lease_seconds: float = LEASE_SECONDS):
        self.workdir = workdir_path(workdir)
        path = self.workdir / ".lock"
        self._lock = LeaseLock(path, lease_seconds) if is_object_store(path) else FileLock(path)

    def __enter__(self) -> WorkdirLock:
        error = None
        if jax.process_index() == 0:
            try:
                self._lock.acquire()
            except ConfigError as e:
                error = e
        if jax.process_count() > 1:
            held = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
            if not held and error is None:
                error = ConfigError(
                    f"workdir {self.workdir} is in use by another fmjax run "
                    "(process 0 could not lock it); wait for it or use another --workdir"
                )
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc) -> None:
        if jax.process_index() == 0:
            self._lock.release()


def _in_use(workdir: epath.Path, holder: str, hint: str) -> ConfigError:
    return ConfigError(
        f"workdir {workdir} is in use by another fmjax run ({holder}); {hint}wait for it to "
        "finish or use another --workdir"
    )


class FileLock:
    """An exclusive flock on a local file holding the owner's pid."""

    def __init__(self, path: epath.Path):
        self.path = os.fspath(path)
        self._file = None

    def acquire(self) -> None:
        """Takes the lock; ConfigError naming the holder's pid when another process has it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise _in_use(epath.Path(os.path.dirname(self.path)), f"pid {holder}", "") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class LeaseLock:
    """A lock object on an object store, created only if absent and renewed while held."""

    def __init__(self, path: epath.Path, lease_seconds: float = LEASE_SECONDS):
        import fsspec

        self.path = path
        self.lease_seconds = float(lease_seconds)
        self._filesystem, self._name = fsspec.core.url_to_fs(os.fspath(path))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "renewed": time.time(), "lease_seconds": self.lease_seconds}
        ).encode()

    def read(self) -> dict | None:
        """The lock's record, or None when there is no lock object."""
        try:
            return json.loads(self._filesystem.cat_file(self._name))
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        """Creates the lock object, taking over one whose lease ran out; ConfigError if held."""
        for _ in range(3):
            try:
                self._filesystem.pipe_file(self._name, self._record(), mode="create")
            except FileExistsError:
                holder = self.read()
                if holder is None:  # released meanwhile
                    continue
                age = time.time() - float(holder.get("renewed", 0))
                lease = float(holder.get("lease_seconds", LEASE_SECONDS))
                if age < lease:
                    raise _in_use(
                        self.path.parent,
                        f"{holder.get('owner')}, renewed {age:.0f}s ago",
                        f"a killed run's lock expires {lease:.0f}s after its last renewal "
                        f"(in {lease - age:.0f}s; or delete {self.path} if no run uses it): ",
                    ) from None
                print(
                    f"fmjax: taking over the lock of {holder.get('owner')} on {self.path.parent} "
                    f"(not renewed for {age:.0f}s: that run is gone)",
                    flush=True,
                )
                self._filesystem.rm_file(self._name)
                continue
            # Two runs taking over the same expired lock at once: the later create wins.
            if (self.read() or {}).get("owner") != self.owner:
                continue
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew, daemon=True, name="fmjax-lock")
            self._renewer.start()
            return
        raise _in_use(self.path.parent, "could not create its lock object", "")

    def _renew(self) -> None:
        # The read and the renewal write are not one atomic step: a contender's claim landing
        # between them is overwritten once; the contender's own renewer then reads this run's
        # record and stops that run, so one run survives either way.
        while not self._stop.wait(self.lease_seconds / 5):
            holder = self.read()
            if holder is None or holder.get("owner") != self.owner:
                print(
                    f"fmjax: error: lost the workdir lock {self.path} to "
                    f"{(holder or {}).get('owner', 'nobody')}; stopping this run",
                    flush=True,
                )
                _thread.interrupt_main()
                return
            self._filesystem.pipe_file(self._name, self._record())

    def release(self) -> None:
        """Stops renewing and deletes the lock object if it is still this run's."""
        if self._renewer is None:
            return
        self._stop.set()
        self._renewer.join()
        self._renewer = None
        if (self.read() or {}).get("owner") == self.owner:
            self._filesystem.rm_file(self._name)
