"""The run context: a config checked and resolved, its task, mesh, sharding rules and program.

Everything that runs a model from a config enters it the same way (the trainer's modes,
generation, the tools):

    with open_run(config) as run:
        data = run.build_data()
        state, step = run.restore_latest(workdir)
        values = run.evaluate(state["params"], data)

Inside the block the mesh and the logical-axis rules are active, so the steps trace against them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from fmjax.config import resolve_auto_fields, validate_config
from fmjax.data.corpora import one_process_at_a_time
from fmjax.data.task_data import TaskData
from fmjax.errors import ConfigError
from fmjax.models import model_settings
from fmjax.parallel.mesh import check_batch_rows_per_process, make_mesh
from fmjax.parallel.sharding import axis_rules, sharding_context
from fmjax.tasks import build_task
from fmjax.tasks.base import Task
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.init_from import inherit_model_fields
from fmjax.train.step import TrainProgram, TrainState, abstract_batch, build_program
from fmjax.train.storage import workdir_path


@dataclasses.dataclass
class Run:
    """A config on a mesh: its task, sharding rules and compiled-on-demand program."""

    config: ml_collections.ConfigDict
    task: Task
    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]
    program: TrainProgram

    def build_data(self) -> TaskData:
        """The task's data; the processes of a multi-process job prepare a data dir in turn."""
        if jax.process_count() == 1:
            return self.task.build_data()
        with one_process_at_a_time(str(self.config.data.get("data_dir", "."))):
            return self.task.build_data()

    def lower_train_step(self, program: TrainProgram | None = None) -> Any:
        """The train step (of `program`, default this run's) lowered from abstract inputs."""
        program = program or self.program
        batch = abstract_batch(self.task, int(self.config.train.batch_size), program.batch_sharding)
        return program.train_step.lower(program.abstract_state, batch)

    def compile_train_step(self) -> Any:
        """AOT-compiles the train step from abstract inputs (nothing allocated)."""
        return self.lower_train_step().compile()

    def xla_flops_per_step(self, lowered: Any) -> float:
        """XLA's FLOP count of one whole train step (`lowered`: this run's), every loop trip
        counted.

        XLA's cost analysis counts a loop body once, so with scan_layers or grad_accum_steps > 1
        it would see one layer / one microbatch. The count is taken instead from a twin of the
        step with the layers unrolled and the batch in one piece (the same arithmetic), on the
        unpartitioned HLO (lowered, not compiled: all devices' work, without the redundancy of
        replicated computations).
        """
        twin = self.config.copy_and_resolve_references()
        scan_layers = model_settings(twin.model).scan_layers
        if scan_layers or int(twin.train.grad_accum_steps) > 1:
            if scan_layers:
                twin.model.scan_layers = False
            twin.train.grad_accum_steps = 1
            lowered = self.lower_train_step(build_program(twin, self.task, self.mesh))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) if cost else 0.0

    def flops_per_step(self) -> float:
        """Model FLOPs of one train step (the task's formula times the global batch)."""
        return self.task.train_flops_per_example() * int(self.config.train.batch_size)

    def evaluate(self, params: Any, data: TaskData) -> dict[str, Any]:
        """The task's eval metrics of `params` on the held-out data."""
        return self.task.evaluate(self.program, params, data)

    def checkpointer(self, workdir: str, async_save: bool = False) -> Checkpointer:
        """The Checkpointer of `workdir` with this config's checkpoint settings."""
        settings = self.config.checkpoint
        return Checkpointer(workdir, settings.every_steps, settings.keep, async_save)

    def restore_latest(self, workdir: str) -> tuple[TrainState, int]:
        """The newest readable checkpoint's state (on this run's shardings) and its step;
        ConfigError when `workdir` has none."""
        if not (workdir_path(workdir) / "checkpoints").is_dir():
            raise ConfigError(f"no checkpoint in {workdir}/checkpoints; train first (--mode=train)")
        checkpoints = self.checkpointer(workdir)
        try:
            restored = checkpoints.restore_latest(self.program.abstract_state)
        finally:
            checkpoints.close()
        if restored is None:
            raise ConfigError(f"no readable checkpoint in {workdir}/checkpoints; train first")
        state, _, step = restored
        return state, step


@contextlib.contextmanager
def open_run(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Iterator[Run]:
    """Resolves and validates `config` (ConfigError on a mistake), builds its task, mesh (over
    all devices, or `devices`) and program, and keeps the mesh and logical-axis rules active for
    the block."""
    devices = jax.devices() if devices is None else list(devices)
    inherit_model_fields(config)  # model.fields_from_init: the fields of train.init_from's
    resolve_auto_fields(config, jax.default_backend())
    validate_config(config, len(devices))
    task = build_task(config)
    mesh = make_mesh(config.mesh, devices)
    check_batch_rows_per_process(mesh)
    with sharding_context(config, mesh):
        yield Run(config, task, mesh, axis_rules(config), build_program(config, task, mesh))


def log(message: str) -> None:
    """Prints `fmjax: message` once per job (on process 0)."""
    if jax.process_index() == 0:
        print(f"fmjax: {message}", flush=True)
