"""The one train / eval / compile loop, generic over models and tasks."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from fmjax.config import (
    check_workdir,
    resolve_auto_fields,
    validate_config,
    write_snapshot,
)
from fmjax.errors import ConfigError, RunFailure
from fmjax.parallel.mesh import check_batch_rows_per_process, make_mesh
from fmjax.parallel.sharding import shard_batch
from fmjax.tasks import build_task
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.init_from import check_init_from, inherit_model_fields
from fmjax.train.metrics import MetricsWriter, model_flops_utilization, peak_flops_per_device
from fmjax.train.preemption import PreemptionWatcher
from fmjax.train.step import TrainProgram, abstract_batch, build_program, summarize
from fmjax.train.workdir_lock import WorkdirLock, one_process_at_a_time


class _Run:
    """A config on a mesh, in the sharding-rules context the steps are traced under."""

    def __init__(self, config: ml_collections.ConfigDict):
        inherit_model_fields(config)  # model.fields_from_init: the fields of train.init_from's
        resolve_auto_fields(config, jax.default_backend())
        validate_config(config, jax.device_count(), jax.process_count())
        self.config = config
        self.task = build_task(config)
        self.mesh = make_mesh(config.mesh)
        check_batch_rows_per_process(self.mesh)
        self.rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)

    def __enter__(self) -> _Run:
        self._mesh_context = jax.set_mesh(self.mesh)
        self._rules_context = nn.logical_axis_rules(self.rules)
        self._mesh_context.__enter__()
        self._rules_context.__enter__()
        self.program: TrainProgram = build_program(self.config, self.task, self.mesh)
        return self

    def __exit__(self, *exc) -> None:
        self._rules_context.__exit__(*exc)
        self._mesh_context.__exit__(*exc)

    def compile_train_step(self):
        """AOT-compiles the train step from abstract inputs (nothing allocated)."""
        batch = abstract_batch(
            self.task, int(self.config.train.batch_size), self.program.batch_sharding
        )
        return self.program.train_step.lower(self.program.abstract_state, batch).compile()

    def flops_per_step(self) -> float:
        return self.task.train_flops_per_example() * int(self.config.train.batch_size)

    def evaluate(self, params: Any, eval_batches: Any) -> dict[str, float]:
        task_evaluate = getattr(self.task, "evaluate", None)
        if task_evaluate is not None:  # a task whose metrics need the whole split (retrieval)
            return task_evaluate(self.program, params, eval_batches)
        metrics = [
            self.program.eval_step(params, shard_batch(_process_rows(batch), self.mesh))
            for batch in eval_batches
        ]
        values = summarize(metrics)
        derived_metrics = getattr(self.task, "derived_metrics", None)
        return values if derived_metrics is None else {**values, **derived_metrics(values)}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run in `workdir`; returns the last train and eval metrics."""
    with _Run(config) as run:
        check_workdir(config, workdir)
        data = _build_data(run)  # user data errors surface here, before the workdir is touched
        check_init_from(run.config, run.program.abstract_state["params"], workdir)
        with WorkdirLock(workdir):
            write_snapshot(config, workdir, data.provenance)
            return _train_loop(run, data, workdir)


def _train_loop(run: _Run, data: Any, workdir: str) -> dict[str, float]:
    config = run.config
    checkpoints = Checkpointer(
        workdir, config.checkpoint.every_steps, config.checkpoint.keep, config.checkpoint.async_save
    )
    data_identity = _data_identity(data.provenance)
    state, data_state = _restore_or_init(run, checkpoints, data_identity)
    start_step, skipped_steps = int(data_state["step"]), int(data_state.get("skipped_steps", 0))
    num_steps = int(config.train.num_steps)
    if start_step >= num_steps:
        _log(f"{workdir} is already trained to train.num_steps={num_steps}")
        checkpoints.close()
        return {}
    writer = MetricsWriter(workdir, resume_step=start_step)
    compile_start = time.perf_counter()
    train_step = run.compile_train_step()
    _log(f"compiled train step in {time.perf_counter() - compile_start:.1f}s")

    peak = peak_flops_per_device(config.train.peak_flops_per_device)
    tokens_per_step = run.task.tokens_per_example() * int(config.train.batch_size)
    log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
    halt_on_nonfinite = config.train.nonfinite == "halt"
    summary: dict[str, float] = {}
    pending: list[dict] = []
    # A throughput window spans the train steps since the last log, minus `paused` (eval and
    # checkpoint seconds): tokens/s and MFU measure training alone.
    window_start, window_steps, paused = time.perf_counter(), 0, 0.0
    batches = data.train.iterate(start_step)
    preemption = PreemptionWatcher(config.checkpoint.preemption_grace_seconds)
    progress = tqdm(
        total=num_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    step = start_step
    try:
        for step in range(start_step + 1, num_steps + 1):
            state, metrics = train_step(state, shard_batch(next(batches), run.mesh))
            pending.append(metrics)
            window_steps += 1
            if len(pending) > 1:  # the bar counts finished steps; one step stays in flight
                jax.block_until_ready(pending[-2])
                progress.update(step - 1 - progress.n)
            if halt_on_nonfinite and float(metrics["nonfinite"][0]):
                raise RunFailure(
                    f"non-finite loss or gradients at step {step} (the update was not applied); "
                    f"the last good checkpoint is step {checkpoints.latest_step() or 'none'}: "
                    "lower train.learning_rate, or set train.nonfinite=skip"
                )
            if step % log_every == 0 or step in (1, num_steps):
                values = summarize(pending)  # fetching the metrics waits for the steps
                skipped = round(values.pop("nonfinite") * window_steps)
                skipped_steps += skipped
                if skipped and jax.process_index() == 0:
                    progress.write(f"fmjax: skipped {skipped} non-finite update(s) before {step}")
                progress.update(step - progress.n)
                seconds = (time.perf_counter() - window_start - paused) / window_steps
                values.update(
                    skipped_steps=skipped_steps,
                    tokens_per_s=tokens_per_step / seconds,
                    steps_per_s=1.0 / seconds,
                    mfu=model_flops_utilization(
                        run.flops_per_step(), seconds, jax.device_count(), peak
                    ),
                )
                writer.write(step, "train", values)
                progress.set_postfix(
                    loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:,.0f}"
                )
                summary.update({f"train_{k}": v for k, v in values.items() if v is not None})
                pending, window_start, window_steps, paused = [], time.perf_counter(), 0, 0.0
            if step % eval_every == 0 or step == num_steps:
                jax.block_until_ready(state)  # so `paused` counts the eval alone
                eval_start = time.perf_counter()
                values = run.evaluate(state["params"], data.eval_batches)
                paused += time.perf_counter() - eval_start
                writer.write(step, "eval", values)
                summary.update({f"eval_{k}": v for k, v in values.items()})
                if jax.process_index() == 0:  # tqdm.write prints even when the bar is disabled
                    progress.write(_format_metrics(step, "eval", values))
            stop = preemption.should_stop(step)
            position = {"step": step, "skipped_steps": skipped_steps, **data_identity}
            force = stop or step == num_steps
            if force or checkpoints.manager.should_save(step):
                jax.block_until_ready(state)  # so the stall below counts the save alone
                save_start = time.perf_counter()
                checkpoints.save(step, state, position, force=force)
                # With async saves this is the device-to-host copy; writing goes on behind.
                stall = time.perf_counter() - save_start
                paused += stall
                summary["checkpoint_stall_s_max"] = max(
                    stall, summary.get("checkpoint_stall_s_max", 0.0)
                )
            if stop:
                summary["preempted_at_step"] = step
                break
    finally:
        progress.close()
        checkpoints.close()
        writer.close()
        preemption.close()
    if "preempted_at_step" in summary:
        _log(f"preempted: saved step {step}; re-run the same command to resume")
    else:
        _log(_format_metrics(num_steps, "final", summary))
    return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the latest checkpoint in `workdir` on the held-out batches."""
    with _Run(config) as run:
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise ConfigError(f"no checkpoint in {workdir}/checkpoints; train first (--mode=train)")
        data = _build_data(run)
        checkpoints = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
        restored = checkpoints.restore_latest(run.program.abstract_state)
        checkpoints.close()
        if restored is None:
            raise ConfigError(f"no readable checkpoint in {workdir}/checkpoints; train first")
        state, _, step = restored
        values = run.evaluate(state["params"], data.eval_batches)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "eval.json"), "w") as f:
                json.dump({"step": step, "split": "eval", **values}, f, indent=2)
        _log(_format_metrics(step, "eval", values))
        return values


def compile_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compiles the train step for the configured mesh from abstract inputs; writes compile.json."""
    with _Run(config) as run:
        start = time.perf_counter()
        compiled = run.compile_train_step()
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        per_device_flops = float(cost.get("flops", 0.0)) if cost else 0.0
        report = {
            "mesh": dict(run.mesh.shape),
            "num_devices": jax.device_count(),
            "compile_seconds": round(seconds, 2),
            "per_device": {
                "argument_bytes": int(memory.argument_size_in_bytes),
                "output_bytes": int(memory.output_size_in_bytes),
                "temp_bytes": int(memory.temp_size_in_bytes),
                "generated_code_bytes": int(memory.generated_code_size_in_bytes),
            },
            # XLA's count for one device's partition of the step, times the devices.
            "flops_per_step": per_device_flops * jax.device_count(),
            # XLA counts a loop body once: with scanned layers or microbatches the count above
            # is one layer's / one microbatch's share; trust the model formula then.
            "xla_flops_count_loops_once": bool(
                config.model.get("scan_layers") or int(config.train.get("grad_accum_steps", 1)) > 1
            ),
            "model_flops_per_step": run.flops_per_step(),
        }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "compile.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(format_compile_report(report))
    return report


def format_compile_report(report: dict) -> str:
    """The compile report as a small table."""
    mesh = " x ".join(f"{axis}={size}" for axis, size in report["mesh"].items())
    rows = [("mesh", mesh), ("devices", str(report["num_devices"]))]
    rows += [(f"per-device {k}", _bytes(v)) for k, v in report["per_device"].items()]
    rows += [
        (
            "FLOPs / step (XLA)",
            f"{report['flops_per_step']:.4g}"
            + (" (loop bodies counted once)" if report["xla_flops_count_loops_once"] else ""),
        ),
        ("FLOPs / step (model formula)", f"{report['model_flops_per_step']:.4g}"),
        ("compile seconds", str(report["compile_seconds"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _restore_or_init(
    run: _Run, checkpoints: Checkpointer, data_identity: dict
) -> tuple[dict, dict]:
    """The newest good checkpoint's state and data position, or a fresh state at step 0
    (with train.init_from's pretrained params copied in, for a new run)."""
    restored = checkpoints.restore_latest(run.program.abstract_state)
    if restored is None:
        state = run.program.init_state()
        init_from = str(run.config.train.get("init_from", "") or "")
        if init_from:
            from fmjax.train.init_from import init_from_pretrained

            state, copied, step = init_from_pretrained(
                init_from,
                state,
                run.program.state_shardings["params"],
                stacked=bool(run.config.model.get("scan_layers", False)),
                tokenizer_sha256=data_identity.get("tokenizer_sha256", ""),
            )
            _log(f"initialized {len(copied)} parameters from {init_from} (step {step})")
        return state, {"step": 0}
    state, data_state, step = restored
    for key, value in data_identity.items():
        if data_state.get(key, value) != value:
            raise ConfigError(
                f"checkpoint step {step} was trained with {key}={data_state[key]}, the data now "
                f"has {value} (another tokenizer or corpus); use the original data or a new "
                "--workdir"
            )
    _log(f"resumed from checkpoint step {step}")
    return state, data_state


def _build_data(run: _Run) -> Any:
    """The task's data; the processes of a multi-process job prepare a data dir in turn."""
    if jax.process_count() == 1:
        return run.task.build_data()
    with one_process_at_a_time(str(run.config.data.get("data_dir", "."))):
        return run.task.build_data()


def _data_identity(provenance: dict) -> dict:
    """What a checkpoint must agree with in the data: the tokenizer, when there is one."""
    tokenizer = provenance.get("tokenizer") or {}
    return {"tokenizer_sha256": tokenizer["sha256"]} if "sha256" in tokenizer else {}


def _process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous block of rows of a global batch."""
    count, index = jax.process_count(), jax.process_index()
    return {k: np.array_split(v, count)[index] for k, v in batch.items()}


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _format_metrics(step: int, split: str, values: dict[str, Any]) -> str:
    parts = [f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float)]
    return f"step {step} {split}: " + " ".join(parts)


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"fmjax: {message}", flush=True)
