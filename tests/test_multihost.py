"""Multi-host: local multi-process runs, launch scripts, hybrid (ICI x DCN) meshes, start-up."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest
from jax.experimental import mesh_utils

from fmjax.config import validate_config
from fmjax.data.pipeline import make_loader
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.parallel.distributed import plan_distributed
from fmjax.parallel.mesh import (
    check_batch_rows_per_process,
    hybrid_device_array,
    make_mesh,
    process_batch_block,
    process_row_blocks,
)
from fmjax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.sh")
TIME_LIMIT = 240  # seconds for one launch/local.sh job; a hang fails the test instead
# Short smoke run: a log line every step, one checkpoint (the final one).
RUN = dict(num_steps=4, log_every=1, eval_every=4)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # local.sh sets its own
    return {**env, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **extra}


def _local(*args, timeout=TIME_LIMIT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LOCAL, *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# --- 2 processes x 4 devices == 1 process x 8 devices ---------------------------------------


def _launch(workdir, data_dir, num_processes, devices_per_process, *overrides):
    """launch/local.sh running the smoke run, started in the background."""
    return subprocess.Popen(
        [
            LOCAL,
            *("--num_processes", str(num_processes)),
            *("--devices_per_process", str(devices_per_process), "--"),
            f"--config={REPO}/experiments/bert_tiny.py:smoke",
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            "--config.checkpoint.every_steps=100",
            *[f"--config.train.{key}={value}" for key, value in RUN.items()],
            *overrides,
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(shared_data_dir, tmp_path_factory):
    """The smoke run as 2 local processes x 4 devices (launch/local.sh, hybrid mesh of 2
    process slices) and, meanwhile, as 1 process x 8 devices in this process; then as
    2 processes x 2 devices with the tensor axis spanning the processes (data parallel inside
    each). The launches run one after the other: on 2 cores, 4 processes compiling at once can
    outlast gloo's 30 s rendezvous."""
    one = tmp_path_factory.mktemp("one_process") / "run"
    two = tmp_path_factory.mktemp("two_processes") / "run"
    tensor = tmp_path_factory.mktemp("tensor_across_processes") / "run"
    start = time.perf_counter()
    launch = _launch(two, shared_data_dir, 2, 4, "--config.mesh.dcn.data=2")
    results = []
    try:
        config = experiment_config("bert_tiny", "smoke")
        config.data.data_dir = shared_data_dir
        config.train.update(RUN)
        config.checkpoint.every_steps = 100
        trainer.train(config, str(one))
        print(f"\n1 process x 8 devices (in this process): {time.perf_counter() - start:.1f}s")
        stdout, stderr = launch.communicate(timeout=TIME_LIMIT)
        results.append(subprocess.CompletedProcess(launch.args, launch.returncode, stdout, stderr))
        print(f"2 processes x 4 devices (launch/local.sh): {time.perf_counter() - start:.1f}s")
        assert launch.returncode == 0, stderr[-3000:]
        tensor_flags = (
            "--config.mesh.data=2",
            "--config.mesh.tensor=2",
            "--config.mesh.dcn.tensor=2",
        )
        launch = _launch(tensor, shared_data_dir, 2, 2, *tensor_flags)
        stdout, stderr = launch.communicate(timeout=TIME_LIMIT)
        print(f"2 processes x 2 devices, tensor across: {time.perf_counter() - start:.1f}s")
        assert launch.returncode == 0, stderr[-3000:]
    finally:
        if launch.poll() is None:  # local.sh stops its processes on SIGTERM
            launch.terminate()
            launch.communicate(timeout=30)
    return one, two, results[0], tensor


def assert_same_losses(one: list[dict], other: list[dict], label: str) -> None:
    """The same (step, split) records, losses and accuracies equal to float32 rounding."""
    assert [(r["step"], r["split"]) for r in other] == [(r["step"], r["split"]) for r in one]
    for key in ("loss", "accuracy"):
        a = np.array([r[key] for r in one])
        b = np.array([r[key] for r in other])
        print(f"{key}: max |{label}| = {np.max(np.abs(a - b)):.3g}")
        # gloo and in-process all-reduces may sum in another order: float32 rounding only
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5)


def test_two_processes_log_the_same_losses_as_one(runs):
    one, two = _records(runs[0]), _records(runs[1])
    assert len(one) == RUN["num_steps"] + 1  # 4 train records and the final eval
    assert_same_losses(one, two, "1x8 - 2x4")


def test_tensor_axis_across_processes_logs_the_same_losses_as_one_process(runs):
    """One process per device group, tensor groups spanning processes (as with one process per
    GPU): the processes of a tensor group read the same rows of each batch."""
    one, tensor = _records(runs[0]), _records(runs[3])
    assert_same_losses(one, tensor, "1x8 data - 2x2 tensor across processes")


def test_only_process_zero_writes_metrics_manifest_and_tensorboard(runs):
    _, workdir, result, _ = runs
    files = sorted(os.listdir(workdir))
    assert [name for name in files if "metrics" in name] == ["metrics.jsonl"]
    steps = [(r["step"], r["split"]) for r in _records(workdir)]
    assert len(steps) == len(set(steps))  # no record written twice
    with open(os.path.join(workdir, "manifest.json")) as f:
        devices = json.load(f)["devices"]
    assert (devices["num_processes"], devices["num_devices"]) == (2, 8)
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
    assert str(RUN["num_steps"]) in os.listdir(os.path.join(workdir, "checkpoints"))
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert any(line.startswith("[0] fmjax: step 4 final") for line in lines)
    assert not any(line.startswith("[1] fmjax:") for line in lines)


# --- launch/local.sh stops everything when one process fails ---------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _launched_pids(stderr: str) -> list[int]:
    return [int(line.split("pid ")[1]) for line in stderr.splitlines() if ": pid " in line]


def test_local_launch_stops_the_others_when_one_process_fails(tmp_path, shared_data_dir):
    wrapper = tmp_path / "python_failing_in_rank_1"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$FMJAX_PROCESS_ID" == 1 ]]; then echo "rank 1: bad argument" >&2; exit 3; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    result = _local(
        *("--num_processes", "3", "--devices_per_process", "1", "--grace_seconds", "2", "--"),
        f"--config={REPO}/experiments/bert_tiny.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={shared_data_dir}",
        timeout=120,
        PYTHON=str(wrapper),
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "[1] rank 1: bad argument" in result.stderr
    assert "process 1 exited with code 3; stopping the others" in result.stderr
    pids = _launched_pids(result.stderr)
    assert len(pids) == 3 and all(_gone(pid) for pid in pids)  # no orphans


def test_local_launch_returns_a_config_error_of_all_processes(tmp_path):
    result = _local(
        *("--num_processes", "2", "--devices_per_process", "4", "--"),
        f"--config={REPO}/experiments/bert_tiny.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        "--config.mesh.fsdp=3",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "fmjax: error: mesh" in result.stderr
    assert all(_gone(pid) for pid in _launched_pids(result.stderr))
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "args",
    [
        ["--num_processes", "2", "--", "--config=x"],
        ["--num_processes", "0", "--devices_per_process", "4", "--", "--config=x"],
        ["--num_processes", "2", "--devices_per_process", "4"],
        ["--bogus"],
    ],
)
def test_local_launch_bad_arguments_print_usage(args):
    result = _local(*args, timeout=30)
    assert result.returncode == 2
    assert "usage: launch/local.sh" in result.stderr


# --- launch/tpu_pod.sh and launch/slurm_gpu.sbatch -----------------------------------------


def test_tpu_pod_dry_run_prints_every_command():
    result = subprocess.run(
        [
            os.path.join(REPO, "launch", "tpu_pod.sh"),
            *("--tpu_name", "pod-a", "--zone", "us-central2-b", "--accelerator_type", "v4-32"),
            *("--project", "my-proj", "--dry_run", "--"),
            *("--config", "experiments/bert_base.py", "--workdir", "/mnt/shared/runs/bert"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(PATH="/usr/bin:/bin"),  # no gcloud needed: nothing runs
    )
    assert result.returncode == 0, result.stderr
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    where = "--zone=us-central2-b --project=my-proj"
    assert (
        commands[0] == f"gcloud compute tpus tpu-vm describe pod-a {where} '--format=value(state)'"
    )
    assert commands[1] == (
        f"gcloud compute tpus tpu-vm create pod-a {where} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base"
    )
    # the exact versions of this environment, as a constraints file shipped in the archive
    assert commands[2].startswith("bash -c 'mkdir -p ") and "pip freeze" in commands[2]
    assert commands[3].startswith("bash -c 'git -C ") and "tar -czf" in commands[3]
    assert commands[3].endswith(" constraints.txt'")
    assert commands[4].startswith("gcloud compute tpus tpu-vm scp ")
    assert "pod-a:fmjax.tar.gz --worker=all" in commands[4]
    assert commands[5].startswith(f"gcloud compute tpus tpu-vm ssh pod-a --worker=all {where}")
    assert "pip install -q -c ~/fmjax/constraints.txt" in commands[5]
    assert commands[6] == (
        f"gcloud compute tpus tpu-vm ssh pod-a --worker=all {where} --command 'cd ~/fmjax && "
        "python3 -m fmjax.main --config experiments/bert_base.py --workdir /mnt/shared/runs/bert "
        "--config.distributed.cluster=tpu "
        "--config.compilation_cache_dir=/mnt/shared/runs/bert/jax_compilation_cache'"
    )
    assert len(commands) == 7


def test_tpu_pod_without_a_name_prints_usage():
    result = subprocess.run(
        [os.path.join(REPO, "launch", "tpu_pod.sh"), "--zone", "z", "--dry_run", "--", "-x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "usage: launch/tpu_pod.sh" in result.stderr


def test_slurm_batch_script_runs_one_srun_step(tmp_path):
    fake_srun = tmp_path / "srun"
    fake_srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    fake_srun.chmod(0o755)
    script = os.path.join(REPO, "launch", "slurm_gpu.sbatch")
    env = _env(
        PATH=f"{tmp_path}:/usr/bin:/bin",
        SLURM_JOB_ID="7",
        SLURM_SUBMIT_DIR=REPO,
        SRUN_ARGS=str(tmp_path / "args"),
    )
    run = ["bash", script, "--", "--config", "experiments/gpt2_small.py", "--workdir", "/w"]
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "--kill-on-bad-exit=1",
        "--label",
        "python",
        "-m",
        "fmjax.main",
        *("--config", "experiments/gpt2_small.py", "--workdir", "/w"),
        "--config.distributed.cluster=slurm",
        "--config.compilation_cache_dir=/w/jax_compilation_cache",
    ]
    env.pop("SLURM_JOB_ID")
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "submit it with sbatch" in result.stderr


def test_slurm_batch_script_sets_xla_gpu_flags_this_xla_knows(tmp_path):
    fake_srun = tmp_path / "srun"
    fake_srun.write_text('#!/usr/bin/env bash\nprintf "%s" "$XLA_FLAGS" > "$SRUN_ARGS"\n')
    fake_srun.chmod(0o755)
    env = _env(
        PATH=f"{tmp_path}:/usr/bin:/bin",
        SLURM_JOB_ID="7",
        SLURM_SUBMIT_DIR=REPO,
        SRUN_ARGS=str(tmp_path / "flags"),
        XLA_FLAGS="--xla_dump_to=/tmp/x",
    )
    script = os.path.join(REPO, "launch", "slurm_gpu.sbatch")
    run = ["bash", script, "--", "--config", "c.py", "--workdir", "/w"]
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
    flags = (tmp_path / "flags").read_text()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert flags.endswith(" --xla_dump_to=/tmp/x")  # the user's own flags come last
    # XLA aborts at start-up on a flag it does not know (GPU flags parse on CPU too).
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    result = subprocess.run(
        probe, env=_env(XLA_FLAGS=flags), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_compilation_cache_dir_keeps_compiled_programs(tmp_path):
    cache = tmp_path / "cache"
    result = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "fmjax.main",
                f"--config={REPO}/experiments/bert_tiny.py:smoke",
            ),
            *(f"--workdir={tmp_path / 'run'}", "--mode=compile"),
            f"--config.compilation_cache_dir={cache}",
        ],
        cwd=REPO,
        env=_env(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # keep even fast compiles
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(cache.iterdir())) >= 1


SLURM_PROBE = """
from fmjax.config import base_config
from fmjax.parallel.distributed import initialize_distributed
plan = initialize_distributed(base_config())
import jax
print(plan.cluster, jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
"""


def test_slurm_environment_starts_a_real_two_process_job():
    """The Slurm variables srun sets, on this machine: JAX finds coordinator, count and ids."""
    processes = []
    for rank in range(2):
        slurm = dict(
            SLURM_JOB_ID=str(40000 + os.getpid() % 1000),
            SLURM_STEP_NODELIST="localhost",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", SLURM_PROBE],
                env=_env(**slurm),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=120)[0].split() for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    assert outputs == [["slurm", "0", "2", "4"], ["slurm", "1", "2", "4"]]


# --- initialize_distributed: where the coordinator comes from -------------------------------

EXPLICIT_ENV = {
    "FMJAX_COORDINATOR": "127.0.0.1:12355",
    "FMJAX_NUM_PROCESSES": "4",
    "FMJAX_PROCESS_ID": "3",
}
SLURM_ENV = {
    "SLURM_JOB_ID": "99",
    "SLURM_STEP_NODELIST": "node[001-004]",
    "SLURM_NTASKS": "32",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "5",
}


def test_explicit_coordinator_from_the_environment():
    plan = plan_distributed({}, EXPLICIT_ENV)
    assert (plan.cluster, plan.coordinator_address, plan.num_processes, plan.process_id) == (
        "explicit",
        "127.0.0.1:12355",
        4,
        3,
    )
    assert plan.initialize_kwargs() == dict(
        coordinator_address="127.0.0.1:12355",
        num_processes=4,
        process_id=3,
        initialization_timeout=300,
    )


def test_config_fields_override_the_environment_and_win_over_slurm():
    section = dict(coordinator_address="10.0.0.2:8476", num_processes=2, process_id=-1)
    plan = plan_distributed(section, {**SLURM_ENV, "FMJAX_PROCESS_ID": "1"})
    assert (plan.cluster, plan.coordinator_address, plan.num_processes, plan.process_id) == (
        "explicit",
        "10.0.0.2:8476",
        2,
        1,
    )


def test_slurm_tpu_and_single_process_detection():
    assert plan_distributed({}, SLURM_ENV).cluster == "slurm"
    assert plan_distributed({}, SLURM_ENV).initialize_kwargs()["cluster_detection_method"] == (
        "slurm"
    )
    assert plan_distributed({}, {**SLURM_ENV, "SLURM_NTASKS": "1"}).cluster == "none"
    assert plan_distributed({}, {}, on_tpu_vm=True).cluster == "tpu"
    assert plan_distributed({}, {}).cluster == "none"
    assert plan_distributed({"cluster": "none"}, EXPLICIT_ENV).cluster == "none"
    assert plan_distributed({"cluster": "tpu"}, {}).initialize_kwargs() == {
        "initialization_timeout": 300
    }


@pytest.mark.parametrize(
    "section,environ,message",
    [
        ({}, {**EXPLICIT_ENV, "FMJAX_PROCESS_ID": "4"}, "not in [0, 4)"),
        ({}, {"FMJAX_COORDINATOR": "127.0.0.1:1", "FMJAX_NUM_PROCESSES": "2"}, "process_id"),
        ({}, {**EXPLICIT_ENV, "FMJAX_NUM_PROCESSES": "two"}, "must be an integer"),
        ({}, {**EXPLICIT_ENV, "FMJAX_COORDINATOR": "localhost"}, "not host:port"),
        ({"cluster": "explicit"}, {}, "needs distributed.coordinator_address"),
        ({"cluster": "slurm"}, {"SLURM_JOB_ID": "1"}, "start the job with srun"),
        ({"cluster": "mpi"}, {}, "is not one of"),
    ],
)
def test_distributed_config_errors(section, environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_distributed(section, environ)


# --- hybrid (ICI x DCN) meshes ---------------------------------------------------------------


def _mesh_config(dcn=None, **sizes) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.update(sizes)
    config.dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, **(dcn or {})})
    return config


def _fake_devices(num_groups: int, per_group: int, attribute: str) -> list:
    """CPU-like devices spread over slices (slice_index) or processes (process_index)."""
    devices = []
    for i in range(num_groups * per_group):
        group = i // per_group
        devices.append(
            types.SimpleNamespace(
                id=i,
                platform="cpu",
                device_kind="cpu",
                process_index=group if attribute == "process_index" else 0,
                slice_index=group if attribute == "slice_index" else None,
            )
        )
    return devices


def test_single_slice_mesh_is_unchanged():
    mesh = make_mesh(_mesh_config(fsdp=2, tensor=2))
    reference = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert [d.id for d in mesh.devices.flat] == [d.id for d in reference.devices.flat]


def test_hybrid_mesh_with_simulated_devices_puts_each_slice_in_its_own_block():
    mesh = make_mesh(_mesh_config(dcn=dict(data=2), data=4, fsdp=2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0]
    # 8 devices in one process stand in for 2 slices of 4: data rows 0-1 and 2-3.
    assert sorted(ids[:2].flat) == [0, 1, 2, 3] and sorted(ids[2:].flat) == [4, 5, 6, 7]
    mesh = make_mesh(_mesh_config(dcn=dict(fsdp=2), data=2, fsdp=4))
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0]
    assert sorted(ids[:, :2].flat) == [0, 1, 2, 3] and sorted(ids[:, 2:].flat) == [4, 5, 6, 7]


def test_hybrid_layout_matches_jax_for_tpu_slices():
    devices = _fake_devices(4, 4, "slice_index")  # 4 slices of 4 chips
    ours = hybrid_device_array((1, 4, 1), (2, 1, 2), devices)
    theirs = mesh_utils.create_hybrid_device_mesh((1, 4, 1), (2, 1, 2), devices)
    assert ours.shape == (2, 4, 2)
    assert [d.id for d in ours.flat] == [d.id for d in theirs.flat]


def test_hybrid_mesh_groups_consecutive_processes_into_hosts():
    devices = _fake_devices(4, 2, "process_index")  # e.g. 2 hosts x 2 processes x 2 GPUs
    array = hybrid_device_array((4, 1, 1), (2, 1, 1), devices)
    processes = np.vectorize(lambda d: d.process_index)(array)[:, 0, 0]
    assert list(processes) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: make_mesh(_mesh_config(dcn=dict(data=3), data=8)), "positive divisor"),
        (lambda: make_mesh(_mesh_config(dcn=dict(tensor=0), tensor=2)), "positive divisor"),
        (
            lambda: hybrid_device_array((2, 1, 1), (4, 1, 1), _fake_devices(2, 4, "slice_index")),
            "devices form 2",
        ),
        (
            lambda: hybrid_device_array((1, 1, 1), (2, 1, 1), _fake_devices(3, 1, "process_index")),
            "does not divide the 3 processes",
        ),
    ],
)
def test_hybrid_mesh_config_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_each_process_reads_the_batch_block_its_devices_hold():
    # 2 processes x 4 devices: data 4 x fsdp 2 gives process 0 blocks 0-3, process 1 blocks 4-7.
    grid = np.repeat([0, 1], 4).reshape(4, 2, 1)
    assert process_row_blocks(grid) == [[0, 1, 2, 3], [4, 5, 6, 7]]

    def mesh_of(num_processes, per_process, shape):
        devices = _fake_devices(num_processes, per_process, "process_index")
        devices = np.array(devices, dtype=object).reshape(shape)
        return types.SimpleNamespace(devices=devices, shape=dict(zip("dft", shape, strict=True)))

    # tensor 8 spans both processes: both read the whole batch.
    mesh = mesh_of(2, 4, (1, 1, 8))
    assert [process_batch_block(mesh, p) for p in (0, 1)] == [(0, 1), (0, 1)]
    # one process per GPU, data 2 x tensor 4: processes 0-3 read block 0, 4-7 block 1.
    mesh = mesh_of(8, 1, (2, 1, 4))
    assert [process_batch_block(mesh, p)[0] for p in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    check_batch_rows_per_process(mesh_of(2, 4, (2, 2, 2)))
    # process 0 holding blocks 0 and 2 of 4: no one contiguous block to read.
    devices = np.array(_fake_devices(2, 2, "process_index"), dtype=object)
    mesh = types.SimpleNamespace(devices=devices[[0, 2, 1, 3]].reshape(2, 2, 1), shape={})
    with pytest.raises(ConfigError, match="not one contiguous block"):
        check_batch_rows_per_process(mesh)


def test_batch_needs_to_divide_the_row_groups_not_the_processes():
    """8 processes, one per GPU, data 2 x tensor 4: a batch of 4 rows is two row groups of 2,
    each read by the 4 processes of a tensor group, so 4 rows % 8 processes is no error."""
    config = experiment_config("bert_tiny", "smoke")
    config.mesh.update(data=2, fsdp=1, tensor=4)
    config.train.update(batch_size=4, grad_accum_steps=1)
    validate_config(config, 8)
    devices = np.array(_fake_devices(8, 1, "process_index"), dtype=object).reshape(2, 1, 4)
    mesh = types.SimpleNamespace(devices=devices, shape={"data": 2, "fsdp": 1, "tensor": 4})
    source = [np.array([i]) for i in range(8)]
    rows = []
    for process in range(8):
        index, count = process_batch_block(mesh, process)
        loader = make_loader(
            source,
            lambda x, rng: {"x": x},
            global_batch_size=4,
            seed=0,
            process_index=index,
            process_count=count,
        )
        rows.append(loader.batch(0)["x"][:, 0].tolist())
    assert rows[:4] == [rows[0]] * 4 and rows[4:] == [rows[4]] * 4 and rows[0] != rows[4]
    config.train.batch_size = 5  # not a multiple of the data-parallel size: still an error
    with pytest.raises(ConfigError, match="data-parallel size"):
        validate_config(config, 8)


# --- per-process data: every example once per epoch --------------------------------------------


def test_processes_read_disjoint_rows_that_make_up_the_global_batch():
    source = [np.array([i]) for i in range(24)]

    def transform(x, rng):
        return {"x": x}

    def loader(index, count):
        return make_loader(
            source,
            transform,
            global_batch_size=8,
            seed=3,
            process_index=index,
            process_count=count,
        )

    single, halves = loader(0, 1), [loader(0, 2), loader(1, 2)]
    seen = []
    for step in range(3):  # one epoch: 24 examples, batches of 8
        parts = [h.batch(step)["x"][:, 0] for h in halves]
        np.testing.assert_array_equal(np.concatenate(parts), single.batch(step)["x"][:, 0])
        seen.extend(np.concatenate(parts))
    assert sorted(seen) == list(range(24))
