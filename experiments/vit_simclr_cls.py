"""Classify Fashion-MNIST from the SimCLR-pretrained encoder (experiments/vit_simclr.py).

python -m fmjax.main --config experiments/vit_simclr.py --workdir runs/vit_simclr   # pretrain
python -m fmjax.main --config experiments/vit_simclr_cls.py --workdir runs/vit_simclr_cls
vit_tiny's recipe, with train.init_from=runs/vit_simclr (its encoder; the head is new) and model
selection on 5,000 validation images carved from train. Presets (comma-separated): "probe" (a
linear probe: the encoder frozen, only the head trains), "scratch" (the same ViT and budget from
a random init), "smoke" (seconds, for tests). `--config.data.train_examples=N` trains on a
seeded subset of N labeled images; `python -m fmjax.tools.transfer_curve
--experiment=vit_simclr_cls --inits=pretrained,probe,scratch` picks the checkpoint with the best
validation accuracy and reports the test split on it.
"""

import ml_collections

from fmjax.experiments import experiment_config, parse_preset

PRETRAINED = "runs/vit_simclr"  # the workdir of experiments/vit_simclr.py


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "vit_simclr_cls", smoke=False, scratch=False, probe=False)
    config = experiment_config("vit_tiny", "smoke" if presets.smoke else None)
    config.train.init_from = PRETRAINED
    config.data.validation_examples = 5000  # carved from train with a fixed seed: selection
    config.data.train_examples = 0  # 0: every remaining labeled train image
    config.data.eval_split = "validation"  # the test split is read once, by transfer_curve
    config.checkpoint.keep = 3  # every evaluated checkpoint: the selection reads one of them
    config.checkpoint.async_save = False

    if presets.probe:
        config.train.trainable = "head"  # the frozen encoder's features, a linear classifier
        config.train.learning_rate = 1e-2  # a zero-initialized linear head takes large steps
        config.train.weight_decay = 0.0
    if presets.scratch:
        config.train.init_from = ""
    if presets.smoke:  # seconds: for tests and quick checks (init_from is set by the test)
        config.train.init_from = ""
        config.data.validation_examples = 64
    return config
