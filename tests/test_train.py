"""End to end on the real corpus: train, log, checkpoint, resume, eval, compile."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_records import metric_records

from fmjax.experiments import experiment_config
from fmjax.train import trainer
from fmjax.train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(data_dir: str, **train):
    config = experiment_config("bert_tiny", "smoke")
    config.data.data_dir = data_dir
    config.train.update(train)
    return config


def test_cli_trains_and_writes_the_workdir(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmjax.main",
            f"--config={REPO}/experiments/bert_tiny.py:smoke",
            f"--workdir={workdir}",
            f"--config.data.data_dir={shared_data_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "manifest.json", "metrics.jsonl", "tensorboard", "checkpoints"):
        assert (workdir / name).exists(), name
    assert os.listdir(workdir / "tensorboard")
    # checkpoint.every_steps=3 of 6 steps: steps 3 and 6, no extra save of the first step.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["devices"]["num_devices"] == 8
    assert manifest["data"]["sha256"]
    records = metric_records(workdir)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 4, 6]
    assert evals and 0.0 <= evals[-1]["accuracy"] <= 1.0
    assert all(r["tokens_per_s"] > 0 for r in train)


def test_resume_continues_the_step_count_exactly(shared_data_dir, tmp_path):
    # A constant schedule, so stopping at step 6 (num_steps=6) is an interruption, not a change.
    run = dict(log_every=1, schedule="constant", warmup_steps=0)
    straight = tmp_path / "straight"
    trainer.train(smoke_config(shared_data_dir, num_steps=9, **run), str(straight))

    resumed = tmp_path / "resumed"
    trainer.train(smoke_config(shared_data_dir, num_steps=6, **run), str(resumed))
    # A killed run may have logged past its last checkpoint; those records must be replaced.
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "split": "train", "loss": 123.0}) + "\n")
    trainer.train(smoke_config(shared_data_dir, num_steps=9, **run), str(resumed))

    steps = [r["step"] for r in metric_records(resumed, "train")]
    assert steps == list(range(1, 10))
    losses = {r["step"]: r["loss"] for r in metric_records(resumed, "train")}
    expected = {r["step"]: r["loss"] for r in metric_records(straight, "train")}
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 10)], [expected[s] for s in range(1, 10)], rtol=1e-6
    )
    assert Checkpointer(str(resumed), 3, 3).latest_step() == 9


def test_eval_mode_reads_the_latest_checkpoint(shared_data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = smoke_config(shared_data_dir, num_steps=3)
    trained = trainer.train(config, str(workdir))
    values = trainer.evaluate(smoke_config(shared_data_dir, num_steps=3), str(workdir))
    assert values["loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert json.loads((workdir / "eval.json").read_text())["step"] == 3


def test_checkpoint_round_trip_is_exact(tmp_path):
    state = {
        "step": jax.numpy.int32(7),
        "params": {"w": jax.numpy.arange(12.0).reshape(3, 4), "b": jax.numpy.ones(4)},
    }
    checkpoints = Checkpointer(str(tmp_path), every_steps=1, keep=2)
    checkpoints.save(7, state, {"step": 7}, force=True)
    checkpoints.close()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    restored, data_state = Checkpointer(str(tmp_path), 1, 2).restore(7, abstract)
    assert data_state == {"step": 7}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_are_due_every_steps_only(tmp_path):
    """A fresh run saves at multiples of every_steps, not also at its first step."""
    checkpoints = Checkpointer(str(tmp_path), every_steps=3, keep=2)
    assert [step for step in range(1, 8) if checkpoints.is_due(step)] == [3, 6]
    state = {"w": jax.numpy.ones(2)}
    assert not checkpoints.save(1, state, {"step": 1})
    assert checkpoints.save(3, state, {"step": 3})
    checkpoints.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


@pytest.fixture(scope="module")
def bert_base_compile_reports(tmp_path_factory):
    reports = {}
    for fsdp in (1, 8):
        config = experiment_config("bert_base")
        config.mesh.update(data=8 // fsdp, fsdp=fsdp, tensor=1)
        workdir = tmp_path_factory.mktemp(f"compile{fsdp}")
        reports[fsdp] = (trainer.compile_report(config, str(workdir)), workdir)
    return reports


def test_compile_mode_writes_memory_and_flops(bert_base_compile_reports):
    report, workdir = bert_base_compile_reports[8]
    written = json.loads((workdir / "compile.json").read_text())
    assert set(written["per_device"]) == {
        "argument_bytes",
        "output_bytes",
        "temp_bytes",
        "generated_code_bytes",
    }
    assert written["flops_per_step"] > 0
    # XLA's count and the documented formula describe the same step (formula ignores non-matmuls).
    assert 0.5 < written["model_flops_per_step"] / written["flops_per_step"] < 1.5


def test_fsdp_splits_argument_memory_across_devices(bert_base_compile_reports):
    unsharded = bert_base_compile_reports[1][0]["per_device"]["argument_bytes"]
    sharded = bert_base_compile_reports[8][0]["per_device"]["argument_bytes"]
    assert sharded / unsharded == pytest.approx(1 / 8, rel=0.15)
