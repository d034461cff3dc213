"""Every user mistake gives one clear line on stderr, a non-zero exit and an untouched workdir."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "bert_tiny.py")


def run_main(*args: str, devices: int = 8) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(
        [sys.executable, "-m", "fmjax.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


CASES = {
    "unknown field": ([f"--config={TINY}", "--config.train.num_stepz=3"], "num_stepz"),
    "wrong type": ([f"--config={TINY}", "--config.train.num_steps=many"], "num_steps"),
    "missing config file": (["--config=experiments/no_such_file.py"], "no_such_file"),
    "unknown preset": ([f"--config={TINY}:giant"], "giant"),
    "mesh does not divide devices": ([f"--config={TINY}", "--config.mesh.fsdp=3"], "mesh"),
    "batch not divisible": (
        [f"--config={TINY}", "--config.mesh.data=8", "--config.train.batch_size=12"],
        "batch_size",
    ),
    "mesh does not divide a parameter": (
        [f"--config={TINY}", "--config.mesh.tensor=8", "--config.mesh.data=1"],
        "cannot be split",
    ),
    "unknown dataset": ([f"--config={TINY}", "--config.data.corpus=no_such_corpus"], "corpus"),
    "unknown model family": ([f"--config={TINY}", "--config.model.family=lstm"], "family"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_error_is_one_line_and_leaves_workdir_untouched(name, tmp_path):
    args, expected_word = CASES[name]
    workdir = tmp_path / "run"
    result = run_main(*args, f"--workdir={workdir}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("fmjax: error:")]
    assert len(errors) == 1, result.stderr
    assert expected_word in errors[0], errors[0]
    assert not workdir.exists()


def test_good_workdir_is_not_overwritten_by_another_model(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(
        '{"model": {"family": "bert", "embed_dim": 999}, "task": {}, "data": {}, "seed": 0}'
    )
    before = (workdir / "config.json").read_text()
    result = run_main(f"--config={TINY}:smoke", f"--workdir={workdir}")
    assert result.returncode != 0
    assert "different model" in result.stderr
    assert (workdir / "config.json").read_text() == before
    assert sorted(os.listdir(workdir)) == ["config.json"]
