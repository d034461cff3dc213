"""Orbax checkpoints of the train state and the data position: keep N, never trust a bad one."""

from __future__ import annotations

import errno
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from fmjax.errors import ConfigError, RunFailure
from fmjax.params_io import flat_names
from fmjax.train.storage import move_tree, workdir_path


class Checkpointer:
    """An Orbax CheckpointManager over workdir/checkpoints with `state` and `data` items.

    Saves are atomic (Orbax writes a temporary folder and renames it when complete), so a crash
    mid-save leaves the previous checkpoint as it was. On restore, a checkpoint that cannot be
    read is moved to workdir/checkpoints_corrupt/ and the previous one is used instead.
    `workdir` may be any etils.epath path (gs://bucket/run): on an object store Orbax marks a
    finished save with a commit_success.txt file instead of renaming its folder.
    """

    def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
        self.workdir = workdir_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                # Only every_steps: Orbax's default policy also saves the first step of a fresh
                # run (InitialSavePolicy), a stray checkpoints/1 that costs a save and a `keep`
                # slot. The final and preemption saves are forced by the trainer.
                save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def is_due(self, step: int) -> bool:
        """Whether `step` is one to save at (every_steps; Orbax's save interval)."""
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Saves at `step` when it is due (every_steps) or when forced; returns whether it did."""
        with _disk_full_as_run_failure(step):
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
                ),
                force=force,
            )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step` onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.data

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest readable checkpoint as (state, data_state, step), or None if there is none.

        Raises ConfigError when a checkpoint holds parameters of other shapes (another model).
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                metadata = self.manager.item_metadata(step)["state"]
                _check_param_shapes(step, metadata["params"], abstract_state["params"])
                state, data_state = self.restore(step, abstract_state)
            except ConfigError:
                raise
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
                self._quarantine(step, error)
                continue
            return state, data_state, step
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        target = self.workdir / "checkpoints_corrupt" / f"{step}-{int(time.time())}"
        reason = " ".join(str(error).split())[:200]
        print(
            f"fmjax: checkpoint step {step} is unreadable ({type(error).__name__}: {reason}); "
            f"moved to {target}, falling back to the previous checkpoint",
            flush=True,
        )
        if jax.process_index() == 0:
            move_tree(self.directory / str(step), target)
        self.manager.reload()

    def close(self) -> None:
        """Waits for pending async saves, then releases the manager."""
        with _disk_full_as_run_failure(self.latest_step()):
            self.manager.wait_until_finished()
        self.manager.close()


def _check_param_shapes(step: int, saved: Any, expected: Any) -> None:
    saved_shapes = {name: tuple(leaf.shape) for name, leaf in flat_names(saved).items()}
    for name, leaf in flat_names(expected).items():
        if saved_shapes.get(name) != tuple(leaf.shape):
            raise ConfigError(
                f"checkpoint step {step} holds another model: parameter {name} has shape "
                f"{saved_shapes.get(name, 'missing')}, the config needs {tuple(leaf.shape)}; "
                "use the config it was trained with or a new --workdir"
            )


class _disk_full_as_run_failure:
    """Turns 'no space left' during a save into a one-line error that names the fix."""

    def __init__(self, step: int | None):
        self.step = step

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        full = isinstance(error, OSError) and error.errno == errno.ENOSPC
        if full or "No space left on device" in str(error):
            raise RunFailure(
                f"disk full while saving the checkpoint of step {self.step}; earlier checkpoints "
                "are intact: free space (or move --workdir) and re-run the same command"
            ) from None
        return False
