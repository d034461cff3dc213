"""Preemption: SIGTERM (or JAX's multi-host preemption notice) -> save this step, exit in time."""

from __future__ import annotations

import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Notices a preemption request; the trainer checks `should_stop(step)` after every step.

    SIGTERM sets a flag: the trainer finishes the current step, saves it and waits for the save
    to be written (Orbax wait_until_finished) before it exits, however long that takes: giving
    up would only lose the step, since the scheduler's own SIGKILL ends a truly hung process
    and Orbax's atomic commits keep the previous checkpoint intact either way. If that takes
    more than `grace_seconds`, a warning says so (the scheduler may kill the process first).
    On several hosts, JAX's preemption sync point makes all hosts agree on the step to stop at.
    """

    def __init__(self, grace_seconds: float):
        self.grace_seconds = float(grace_seconds)
        self.requested = threading.Event()
        self._previous = None
        self._timer: threading.Timer | None = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        if self.requested.is_set():
            return  # a repeated SIGTERM: the first one's step and save are under way
        self.requested.set()
        self._timer = threading.Timer(self.grace_seconds, self._slow_stop)
        self._timer.daemon = True
        self._timer.start()

    def _slow_stop(self) -> None:
        print(
            f"fmjax: warning: still finishing the step and its checkpoint "
            f"checkpoint.preemption_grace_seconds={self.grace_seconds:g} after SIGTERM; "
            "waiting for the save (give the scheduler a longer grace period than that)",
            file=sys.stderr,
            flush=True,
        )

    def should_stop(self, step: int) -> bool:
        """True when this step should be the last: a signal here, or a preemption notice."""
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    return True
            except RuntimeError:  # no preemption service (not set up by jax.distributed)
                pass
        return self.requested.is_set()

    def close(self) -> None:
        """Cancels the warning (the stop is done) and restores the previous SIGTERM handler."""
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
