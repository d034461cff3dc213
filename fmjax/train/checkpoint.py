"""Orbax checkpoints of the train state and the data position, kept N at a time."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """An Orbax CheckpointManager over workdir/checkpoints with `state` and `data` items."""

    def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=every_steps,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Saves at `step` when it is due (every_steps) or when forced; returns whether it did."""
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

    def close(self) -> None:
        """Waits for pending async saves, then releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
