"""Multi-process start-up: jax.distributed.initialize from the config or the environment.

Call `initialize_distributed(config)` before anything touches a JAX backend. Where the
coordinator comes from, in order:

1. an explicit coordinator: `config.distributed.{coordinator_address, num_processes,
   process_id}`, each falling back to FMJAX_COORDINATOR / FMJAX_NUM_PROCESSES /
   FMJAX_PROCESS_ID (what launch/local.sh sets for runs on one machine);
2. Slurm (`srun` sets SLURM_JOB_ID, SLURM_NTASKS > 1, ...): JAX reads the Slurm environment;
3. a Cloud TPU VM (`/dev/accel*` or `/dev/vfio` and libtpu): JAX reads the TPU metadata;
4. otherwise a single process, and nothing is initialised.

`config.distributed.cluster` forces one of these: auto | explicit | slurm | tpu | none.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

from fmjax.errors import ConfigError

CLUSTERS = ("auto", "explicit", "slurm", "tpu", "none")
ENV_COORDINATOR = "FMJAX_COORDINATOR"
ENV_NUM_PROCESSES = "FMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "FMJAX_PROCESS_ID"
SLURM_REQUIRED = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """How this process joins the job. `cluster` "none": a single process, nothing to do.

    For "slurm" and "tpu" the address, count and id are left to JAX's own detection (None).
    """

    cluster: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300

    def initialize_kwargs(self) -> dict[str, Any]:
        """Arguments for jax.distributed.initialize."""
        kwargs: dict[str, Any] = {"initialization_timeout": self.initialization_timeout}
        if self.cluster == "explicit":
            kwargs.update(
                coordinator_address=self.coordinator_address,
                num_processes=self.num_processes,
                process_id=self.process_id,
            )
        elif self.cluster == "slurm":
            kwargs["cluster_detection_method"] = "slurm"
        return kwargs


def plan_distributed(
    section: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    on_tpu_vm: bool = False,
) -> DistributedPlan:
    """Decides how to join the job from `config.distributed` and the environment (pure)."""
    section = dict(section or {})
    cluster = str(section.get("cluster", "auto"))
    if cluster not in CLUSTERS:
        raise ConfigError(f"distributed.cluster={cluster!r} is not one of {', '.join(CLUSTERS)}")
    timeout = int(section.get("initialization_timeout", 300))
    if cluster == "none":
        return DistributedPlan("none")
    explicit = _explicit_plan(section, environ, timeout)
    if cluster == "explicit" or (cluster == "auto" and explicit is not None):
        if explicit is None:
            raise ConfigError(
                "distributed.cluster=explicit needs distributed.coordinator_address "
                f"(or {ENV_COORDINATOR}=host:port)"
            )
        return explicit
    if cluster == "slurm" or (cluster == "auto" and _slurm_tasks(environ) > 1):
        missing = [name for name in SLURM_REQUIRED if name not in environ]
        if missing:
            raise ConfigError(
                f"distributed.cluster=slurm but {', '.join(missing)} missing from the "
                "environment; start the job with srun (see launch/slurm_gpu.sbatch)"
            )
        return DistributedPlan("slurm", initialization_timeout=timeout)
    if cluster == "tpu" or (cluster == "auto" and on_tpu_vm):
        return DistributedPlan("tpu", initialization_timeout=timeout)
    return DistributedPlan("none")


def _explicit_plan(
    section: dict[str, Any], environ: Mapping[str, str], timeout: int
) -> DistributedPlan | None:
    address = str(section.get("coordinator_address") or environ.get(ENV_COORDINATOR, ""))
    if not address:
        return None
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", address):
        raise ConfigError(
            f"coordinator address {address!r} is not host:port (e.g. 127.0.0.1:12355); "
            f"fix distributed.coordinator_address or {ENV_COORDINATOR}"
        )
    num_processes = _integer(
        section.get("num_processes", 0) or environ.get(ENV_NUM_PROCESSES),
        "distributed.num_processes",
        ENV_NUM_PROCESSES,
    )
    configured_id = section.get("process_id", -1)
    process_id = _integer(
        configured_id if configured_id not in (None, -1) else environ.get(ENV_PROCESS_ID),
        "distributed.process_id",
        ENV_PROCESS_ID,
    )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process id {process_id} is not in [0, {num_processes}); set "
            f"{ENV_PROCESS_ID} to 0..{num_processes - 1} and {ENV_NUM_PROCESSES} >= 1"
        )
    return DistributedPlan("explicit", address, num_processes, process_id, timeout)


def _integer(value: Any, field: str, env: str) -> int:
    if value is None or str(value).strip() == "":
        raise ConfigError(f"an explicit coordinator needs {field} (or {env}) as well")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{field} / {env} must be an integer, got {value!r}") from None


def _slurm_tasks(environ: Mapping[str, str]) -> int:
    try:
        return int(environ.get("SLURM_NTASKS", "1")) if "SLURM_JOB_ID" in environ else 1
    except ValueError:
        return 1


def running_on_tpu_vm() -> bool:
    """A Cloud TPU VM: TPU device files and the libtpu runtime are both present."""
    has_chips = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return has_chips and importlib.util.find_spec("libtpu") is not None


def initialize_distributed(config: Any) -> DistributedPlan:
    """Joins the multi-process job the config or environment describes (no-op for one process).

    Must run before any JAX computation. On CPU the cross-process collectives use gloo.
    """
    plan = plan_distributed(config.get("distributed"), os.environ, running_on_tpu_vm())
    if plan.cluster == "none":
        return plan
    import jax

    if jax.distributed.is_initialized():
        return plan
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**plan.initialize_kwargs())
    return plan
