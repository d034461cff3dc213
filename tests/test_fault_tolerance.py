"""Fault tolerance: kill -9 and SIGTERM, corrupt checkpoints, resharding, NaNs, bad input."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmjax.errors import ConfigError, RunFailure
from fmjax.experiments import experiment_config
from fmjax.tasks.mlm import MaskedLanguageModeling
from fmjax.train import trainer
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.workdir_lock import WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"{REPO}/experiments/bert_tiny.py:smoke"


def smoke_config(data_dir: str, **train):
    config = experiment_config("bert_tiny", "smoke")
    config.data.data_dir = data_dir
    config.train.update(train)
    return config


def cli(workdir, data_dir, *overrides, devices=8):
    return [
        sys.executable,
        "-m",
        "fmjax.main",
        f"--config={TINY}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ], dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_cli(workdir, data_dir, *overrides, devices=8) -> subprocess.CompletedProcess:
    args, env = cli(workdir, data_dir, *overrides, devices=devices)
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def logged_steps(workdir) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if '"train"' in line]


def train_losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def final_params(workdir) -> dict:
    directory = os.path.join(workdir, "checkpoints")
    step = max(int(name) for name in os.listdir(directory) if name.isdigit())
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    return step, restored["params"]


def assert_same_params(a, b):
    flat_a = {k: v for k, v in _flatten(a)}
    flat_b = {k: v for k, v in _flatten(b)}
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}/{index}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The CLI runs of this file compile the same smoke program: they share one persistent
    compilation cache (as the runs of a job do with compilation_cache_dir), so the first one
    compiles it and the others, resumed runs included, load it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        yield


RUN = (
    "--config.train.num_steps=14",
    "--config.train.log_every=1",
    "--config.checkpoint.every_steps=3",
)


@pytest.fixture(scope="module")
def uninterrupted(shared_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight") / "run"
    result = run_cli(workdir, shared_data_dir, *RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


@pytest.mark.parametrize("trial", [0, 1])
def test_kill_9_at_a_random_step_then_resume_is_bit_identical(
    trial, uninterrupted, shared_data_dir, tmp_path
):
    workdir = tmp_path / "run"
    kill_after = random.Random(trial).randint(2, 11)
    args, env = cli(workdir, shared_data_dir, *RUN)
    process = subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if logged_steps(workdir) and logged_steps(workdir)[-1] >= kill_after:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    result = run_cli(workdir, shared_data_dir, *RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert logged_steps(workdir) == list(range(1, 15))
    assert train_losses(workdir) == train_losses(uninterrupted)
    (step_a, params_a), (step_b, params_b) = final_params(workdir), final_params(uninterrupted)
    assert step_a == step_b == 14
    assert_same_params(params_a, params_b)


# The CLI with the preemption save slowed past the grace period, as under heavy load.
SLOW_SAVE_MAIN = """
import runpy, time
from fmjax.train.checkpoint import Checkpointer
save = Checkpointer.save
def slow_save(self, step, state, data_state, force=False):
    if force:
        time.sleep(3)
    return save(self, step, state, data_state, force)
Checkpointer.save = slow_save
runpy.run_module("fmjax.main", run_name="__main__")
"""


def test_sigterm_saves_the_current_step_and_exits_cleanly(shared_data_dir, tmp_path):
    """Even when the step and save take longer than checkpoint.preemption_grace_seconds."""
    workdir = tmp_path / "run"
    overrides = (
        "--config.train.num_steps=100000",
        "--config.train.log_every=1",
        "--config.checkpoint.every_steps=1000",
        "--config.train.eval_every=1000",
        "--config.checkpoint.preemption_grace_seconds=1",
    )
    args, env = cli(workdir, shared_data_dir, *overrides)
    args = [sys.executable, "-c", SLOW_SAVE_MAIN, *args[3:]]
    process = subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 900  # a hang guard: start-up and compilation are slow under load
    while time.time() < deadline and not (logged_steps(workdir) and logged_steps(workdir)[-1] >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)  # a hang guard; exiting is slow under load
    assert process.returncode == 0, stderr[-2000:]
    assert "preempted" in stdout
    assert "still finishing the step" in stderr
    saved = Checkpointer(str(workdir), 1000, 3).latest_step()
    assert saved is not None and saved >= 3 and saved == logged_steps(workdir)[-1]


WATCHER_PAST_THE_GRACE = """
import os, signal, time
from fmjax.train.preemption import PreemptionWatcher
watcher = PreemptionWatcher(0.2)
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGTERM)  # a repeated signal changes nothing
time.sleep(1.5)  # the step and its save, slower than the grace period
assert watcher.should_stop(1)
watcher.close()
print("saved")
"""


def test_sigterm_never_exits_before_the_step_and_save_finish():
    """The grace period only warns: exiting at it would lose the step being saved."""
    result = subprocess.run(
        [sys.executable, "-c", WATCHER_PAST_THE_GRACE],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "saved", result.stderr[-2000:]
    assert result.stderr.count("still finishing the step") == 1


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    trainer.train(smoke_config(shared_data_dir, num_steps=6), str(workdir))  # saves 3 and 6
    for root, _, files in os.walk(workdir / "checkpoints" / "6" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    values = trainer.evaluate(smoke_config(shared_data_dir, num_steps=6), str(workdir))
    assert np.isfinite(values["loss"])
    assert os.listdir(workdir / "checkpoints_corrupt")
    assert Checkpointer(str(workdir), 3, 3).latest_step() == 3  # step 3 was kept


RESTORE_SCRIPT = """
import json, sys
import numpy as np
from fmjax.experiments import experiment_config
from fmjax.train.checkpoint import Checkpointer
from fmjax.train.run import open_run
config = experiment_config(sys.argv[1], "smoke")
config.mesh.update(json.loads(sys.argv[3]))
with open_run(config) as run:
    state, _, step = Checkpointer(sys.argv[2], 3, 3).restore_latest(run.program.abstract_state)
    kernel = state["params"]["encoder"]["layers"][0]["mlp"]["wi"]["kernel"]
    print(json.dumps({"step": step, "devices": len(kernel.sharding.device_set)}))
    np.save(sys.argv[4], np.asarray(kernel))
"""


@pytest.mark.parametrize(
    "devices,mesh",
    [
        (4, {"data": 2, "fsdp": 2, "tensor": 1}),
        (1, {"data": 1, "fsdp": 1, "tensor": 1}),
        (8, {"data": 1, "fsdp": 8, "tensor": 1}),
    ],
)
def test_restore_onto_another_mesh_is_exact(devices, mesh, shared_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.getbasetemp() / "mesh_source"
    if not (workdir / "checkpoints").exists():
        config = smoke_config(shared_data_dir, num_steps=3)
        config.mesh.update(data=2, fsdp=1, tensor=4)
        config.model.update(num_heads=4, head_dim=16)
        trainer.train(config, str(workdir))
    out = workdir.parent / f"kernel_{devices}.npy"
    script = RESTORE_SCRIPT.replace(
        'experiment_config(sys.argv[1], "smoke")',
        'experiment_config(sys.argv[1], "smoke")\nconfig.model.update(num_heads=4, head_dim=16)',
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "bert_tiny",
            str(workdir),
            json.dumps(mesh),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"step": 3, "devices": devices}
    _, params = final_params(workdir)
    expected = (
        params["encoder"]["layers"]["0"]["mlp"]["wi"]["kernel"]
        if isinstance(params["encoder"]["layers"], dict)
        else params["encoder"]["layers"][0]["mlp"]["wi"]["kernel"]
    )
    np.testing.assert_array_equal(np.load(out), expected)


# A learning rate that turns the first update's params non-finite.
EXPLODING = dict(learning_rate=1e30, warmup_steps=0, schedule="constant")


def test_nonfinite_updates_are_skipped_and_counted(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = smoke_config(shared_data_dir, num_steps=6, log_every=1, **EXPLODING)
    summary = trainer.train(config, str(workdir))
    assert summary["train_skipped_steps"] >= 1
    _, params = final_params(workdir)
    assert all(np.isfinite(value).all() for _, value in _flatten(params))


def test_nonfinite_halt_stops_with_a_clear_error(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = smoke_config(shared_data_dir, num_steps=6, nonfinite="halt", **EXPLODING)
    with pytest.raises(RunFailure, match="non-finite loss"):
        trainer.train(config, str(workdir))


# --- the catalog of bad input: one clear error each, nothing good overwritten ---------------


def test_checkpoint_of_another_model_size_is_refused(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    trainer.train(smoke_config(shared_data_dir, num_steps=3), str(workdir))
    os.remove(workdir / "config.json")  # only the checkpoint can tell now
    bigger = smoke_config(shared_data_dir, num_steps=3)
    bigger.model.mlp_dim = 256
    with pytest.raises(ConfigError, match="holds another model"):
        trainer.train(bigger, str(workdir))
    assert Checkpointer(str(workdir), 3, 3).latest_step() == 3


def test_tokenizer_mismatch_between_checkpoint_and_data_is_refused(
    shared_data_dir, tmp_path, monkeypatch
):
    workdir = tmp_path / "run"
    trainer.train(smoke_config(shared_data_dir, num_steps=3), str(workdir))
    build_data = MaskedLanguageModeling.build_data

    def other_tokenizer(self):
        data = build_data(self)
        data.provenance["tokenizer"] = dict(data.provenance["tokenizer"], sha256="0" * 64)
        return data

    monkeypatch.setattr(MaskedLanguageModeling, "build_data", other_tokenizer)
    with pytest.raises(ConfigError, match="tokenizer"):
        trainer.train(smoke_config(shared_data_dir, num_steps=6), str(workdir))


def test_missing_data_is_a_clear_error(tmp_path):
    result = run_cli(
        tmp_path / "run", str(tmp_path / "data"), "--config.data.corpus=tfds:no_such_dataset"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "fmjax: error:" in result.stderr and "no_such_dataset" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_a_clear_error(shared_data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli(blocker / "run", shared_data_dir)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot write to workdir" in result.stderr


def test_disk_full_during_a_save_is_a_clear_error(shared_data_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    trainer.train(smoke_config(shared_data_dir, num_steps=3), str(workdir))
    save = Checkpointer.save

    def full_disk(self, step, state, data_state, force=False):
        if step > 3:
            with _raise_as_save(step):
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, state, data_state, force)

    monkeypatch.setattr(Checkpointer, "save", full_disk)
    with pytest.raises(RunFailure, match="disk full"):
        trainer.train(smoke_config(shared_data_dir, num_steps=6), str(workdir))
    assert Checkpointer(str(workdir), 3, 3).latest_step() == 3


def _raise_as_save(step):
    from fmjax.train.checkpoint import _disk_full_as_run_failure

    return _disk_full_as_run_failure(step)


def test_second_run_on_a_workdir_in_use_is_refused(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(str(workdir)):
        result = run_cli(workdir, shared_data_dir)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "in use by another fmjax run" in result.stderr
    assert sorted(os.listdir(workdir)) == [".lock"]
