"""The one train / eval / compile loop, generic over models and tasks."""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from fmjax.config import check_workdir, write_snapshot
from fmjax.data.task_data import TaskData
from fmjax.errors import ConfigError, RunFailure
from fmjax.models import model_settings
from fmjax.parallel.sharding import shard_batch
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.init_from import check_init_from
from fmjax.train.metrics import MetricsWriter, model_flops_utilization, peak_flops_per_device
from fmjax.train.preemption import PreemptionWatcher
from fmjax.train.run import Run, log, open_run
from fmjax.train.step import summarize
from fmjax.train.storage import workdir_path, write_text
from fmjax.train.workdir_lock import WorkdirLock


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run in `workdir`; returns the last train and eval metrics."""
    with open_run(config) as run:
        check_workdir(config, workdir)
        data = run.build_data()  # user data errors surface here, before the workdir is touched
        check_init_from(run.config, run.program.abstract_state["params"], workdir)
        with WorkdirLock(workdir):
            write_snapshot(config, workdir, data.provenance)
            return _train_loop(run, data, workdir)


def _train_loop(run: Run, data: TaskData, workdir: str) -> dict[str, float]:
    config = run.config
    checkpoints = run.checkpointer(workdir, config.checkpoint.async_save)
    data_identity = _data_identity(data.provenance)
    state, data_state = _restore_or_init(run, checkpoints, data_identity)
    start_step, skipped_steps = int(data_state["step"]), int(data_state.get("skipped_steps", 0))
    num_steps = int(config.train.num_steps)
    if start_step >= num_steps:
        log(f"{workdir} is already trained to train.num_steps={num_steps}")
        checkpoints.close()
        return {}
    writer = MetricsWriter(workdir, resume_step=start_step)
    compile_start = time.perf_counter()
    train_step = run.compile_train_step()
    log(f"compiled train step in {time.perf_counter() - compile_start:.1f}s")

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
                values = run.evaluate(state["params"], data)
                paused += time.perf_counter() - eval_start
                writer.write(step, "eval", values)
                summary.update({f"eval_{k}": v for k, v in values.items()})
                if jax.process_index() == 0:  # tqdm.write prints even when the bar is disabled
                    progress.write(_format_metrics(step, "eval", values))
            stop = preemption.should_stop(step)
            position = {"step": step, "skipped_steps": skipped_steps, **data_identity}
            force = stop or step == num_steps
            if force or checkpoints.is_due(step):
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
        batches.close()  # stops the loader's worker processes, if any
        progress.close()
        checkpoints.close()
        writer.close()
        preemption.close()
    if "preempted_at_step" in summary:
        log(f"preempted: saved step {step}; re-run the same command to resume")
    else:
        log(_format_metrics(num_steps, "final", summary))
    return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the latest checkpoint in `workdir` on the held-out batches."""
    with open_run(config) as run:
        state, step = run.restore_latest(workdir)
        values = run.evaluate(state["params"], run.build_data())
        if jax.process_index() == 0:
            record = {"step": step, "split": "eval", **values}
            write_text(workdir_path(workdir) / "eval.json", json.dumps(record, indent=2))
        log(_format_metrics(step, "eval", values))
        return values


def compile_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compiles the train step for the configured mesh from abstract inputs; writes compile.json."""
    with open_run(config) as run:
        start = time.perf_counter()
        lowered = run.lower_train_step()
        compiled = lowered.compile()
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
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
            # XLA's count of the whole step (all devices, every layer and microbatch).
            "flops_per_step": run.xla_flops_per_step(lowered),
            "model_flops_per_step": run.flops_per_step(),
        }
    if jax.process_index() == 0:
        workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        write_text(workdir_path(workdir) / "compile.json", json.dumps(report, indent=2))
        print(format_compile_report(report))
    return report


def format_compile_report(report: dict) -> str:
    """The compile report as a small table."""
    mesh = " x ".join(f"{axis}={size}" for axis, size in report["mesh"].items())
    rows = [("mesh", mesh), ("devices", str(report["num_devices"]))]
    rows += [(f"per-device {k}", _bytes(v)) for k, v in report["per_device"].items()]
    rows += [
        ("FLOPs / step (XLA)", f"{report['flops_per_step']:.4g}"),
        ("FLOPs / step (model formula)", f"{report['model_flops_per_step']:.4g}"),
        ("compile seconds", str(report["compile_seconds"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _restore_or_init(run: Run, checkpoints: Checkpointer, data_identity: dict) -> tuple[dict, dict]:
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
                stacked=model_settings(run.config.model).scan_layers,
                tokenizer_sha256=data_identity.get("tokenizer_sha256", ""),
            )
            log(f"initialized {len(copied)} parameters from {init_from} (step {step})")
        return state, {"step": 0}
    state, data_state, step = restored
    for key, value in data_identity.items():
        if data_state.get(key, value) != value:
            raise ConfigError(
                f"checkpoint step {step} was trained with {key}={data_state[key]}, the data now "
                f"has {value} (another tokenizer or corpus); use the original data or a new "
                "--workdir"
            )
    log(f"resumed from checkpoint step {step}")
    return state, data_state


def _data_identity(provenance: dict) -> dict:
    """What a checkpoint must agree with in the data: the tokenizer, when there is one."""
    tokenizer = provenance.get("tokenizer") or {}
    return {"tokenizer_sha256": tokenizer["sha256"]} if "sha256" in tokenizer else {}


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _format_metrics(step: int, split: str, values: dict[str, Any]) -> str:
    parts = [f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float)]
    return f"step {step} {split}: " + " ".join(parts)
