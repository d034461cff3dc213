"""Every experiment file builds its config and compiles its train step on 8 simulated devices."""

import glob
import os

import pytest

from fmjax.config import load_sibling_experiment
from fmjax.train import trainer

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
# Compiled at full size, with stronger checks, by the family's own test file.
COMPILED_ELSEWHERE = {
    "bert_base.py": "tests/test_train.py",
    "gpt2_small.py": "tests/test_gpt.py",
    "vit_b16.py": "tests/test_vit.py",
}
EXPERIMENT_FILES = sorted(
    os.path.basename(path)
    for path in glob.glob(os.path.join(EXPERIMENTS, "*.py"))
    if os.path.basename(path) not in COMPILED_ELSEWHERE
)


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_compiles_on_8_devices(name, tmp_path):
    config = load_sibling_experiment(os.path.join(EXPERIMENTS, "x.py"), name).get_config()
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.train.batch_size = 8  # the program and its shardings matter here, not the batch size
    report = trainer.compile_report(config, str(tmp_path))
    assert report["num_devices"] == 8
    assert report["per_device"]["argument_bytes"] > 0
    # XLA's FLOP count and the task's documented formula describe the same step.
    assert 0.5 < report["model_flops_per_step"] / report["flops_per_step"] < 1.5
