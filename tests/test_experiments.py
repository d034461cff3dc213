"""Every experiment file builds its recorded config and compiles its train step on 8 devices."""

import glob
import json
import os
import sys

import pytest

from fmjax.config import base_config
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config, parse_preset
from fmjax.train import trainer

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
# Compiled at full size, with stronger checks, by the family's own test file.
COMPILED_ELSEWHERE = {
    "bert_base.py": "tests/test_train.py",
    "gpt2_small.py": "tests/test_gpt.py",
    "vit_b16.py": "tests/test_vit.py",
    "contrastive_tiny.py": "tests/test_contrastive.py",  # with fsdp=4
    "gpt_tiny.py": "tests/test_accelerators.py",  # against its scanned, microbatched step
    # These take their model from train.init_from: trained on imported models there.
    "classify.py": "tests/test_published.py",
    "continue_mlm.py": "tests/test_published.py",
    "continue_clm.py": "tests/test_published.py",
}
EXPERIMENT_FILES = sorted(
    os.path.basename(path)
    for path in glob.glob(os.path.join(EXPERIMENTS, "*.py"))
    if os.path.basename(path) not in COMPILED_ELSEWHERE
)


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_compiles_on_8_devices(name, tmp_path):
    config = experiment_config(name)
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.train.batch_size = 8  # the program and its shardings matter here, not the batch size
    report = trainer.compile_report(config, str(tmp_path))
    assert report["num_devices"] == 8
    assert report["per_device"]["argument_bytes"] > 0
    # XLA's FLOP count and the task's documented formula describe the same step.
    assert 0.5 < report["model_flops_per_step"] / report["flops_per_step"] < 1.5


# What each experiment and preset sets on top of base_config(), as dotted fields. A change here
# must be deliberate: refactors of the experiment files and fmjax/experiments.py keep it equal.
# After a deliberate change: PYTHONPATH=. python tests/test_experiments.py --update
GOLDEN_CONFIGS = os.path.join(os.path.dirname(__file__), "experiment_configs.json")


def _flat(value, prefix: str = "") -> dict:
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else key))
    return flat


def experiment_fields(name_and_preset: str) -> dict:
    """The resolved fields of "experiment.py:preset" that differ from (or are not in) the base."""
    name, _, preset = name_and_preset.partition(":")
    config = _flat(json.loads(experiment_config(name, preset or None).to_json()))
    base = _flat(json.loads(base_config().to_json()))
    fields = {key: value for key, value in config.items() if base.get(key, config) != value}
    fields.update({key: "<deleted>" for key in base if key not in config})
    return fields


with open(GOLDEN_CONFIGS) as _file:
    GOLDEN = json.load(_file)


@pytest.mark.parametrize("name_and_preset", sorted(GOLDEN))
def test_experiment_resolves_to_its_recorded_config(name_and_preset):
    assert experiment_fields(name_and_preset) == GOLDEN[name_and_preset]


def test_presets_are_typed_and_unknown_ones_name_the_known():
    presets = parse_preset("smoke,layers=3", "x", smoke=False, siglip=False, layers=1)
    assert (presets.smoke, presets.siglip, presets.layers) == (True, False, 3)
    with pytest.raises(ConfigError, match=r"unknown preset 'giant' for x \(known: smoke, layers"):
        parse_preset("giant", "x", smoke=False, layers=1)
    with pytest.raises(ConfigError, match="expected a int"):
        parse_preset("layers=two", "x", layers=1)
    with pytest.raises(ConfigError, match="unknown preset 'smoke' for x \\(known: none"):
        parse_preset("smoke", "x")


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    with open(GOLDEN_CONFIGS, "w") as _file:
        json.dump({key: experiment_fields(key) for key in GOLDEN}, _file, indent=1, sort_keys=True)
        _file.write("\n")
