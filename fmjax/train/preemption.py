"""Preemption: SIGTERM (or JAX's multi-host preemption notice) -> save this step, exit in time."""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Notices a preemption request; the trainer checks `should_stop(step)` after every step.

    SIGTERM sets a flag and starts a grace timer: if the process has not exited
    `grace_seconds` later (e.g. a save hangs), it exits hard; Orbax's atomic commits mean an
    unfinished save never harms the previous checkpoint. On several hosts, JAX's preemption
    sync point makes all hosts agree on the step to stop at.
    """

    def __init__(self, grace_seconds: float):
        self.grace_seconds = float(grace_seconds)
        self.requested = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.requested.set()
        timer = threading.Timer(self.grace_seconds, self._out_of_time)
        timer.daemon = True
        timer.start()

    def _out_of_time(self) -> None:
        print(
            f"fmjax: error: no clean stop within checkpoint.preemption_grace_seconds="
            f"{self.grace_seconds:g}; exiting (the previous checkpoint is intact)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

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
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
