"""Tiny ViT on Fashion-MNIST (Debian `dataset-fashion-mnist`): about 10 minutes on 2 CPU cores.

python -m fmjax.main --config experiments/vit_tiny.py --workdir runs/vit_tiny
Eval reports top-1 accuracy and macro-F1 on all 10,000 test images (chance is 10%). The recipe
(README "Results", 88.2% in 8.5 min): 7x7 patches, Xavier-uniform kernels, fixed 2-D sine-cosine
positions, mean pooling, label smoothing 0.1, AdamW with warmup + cosine, 6.4 epochs. No
augmentation: at this budget the model underfits, and random crops + flips cost 8 points at 600
steps (the sweep is in README "Results"); `--config.data.crop_padding=2
--config.data.random_flip=True` turns them on for longer runs.
"""

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import (
    ONE_LAYER_SMOKE_SIZE,
    cosine_adamw,
    parse_preset,
    train_schedule,
    vit_model,
)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "vit_tiny", smoke=False)
    config = base_config()
    config.model = vit_model("tiny", position_embedding="sincos2d")
    config.task = ml_collections.ConfigDict(dict(name="image_classification", label_smoothing=0.1))
    config.data.dataset = "fashion_mnist"  # fashion_mnist | tfds:<name> (prepared by the user)
    config.data.source_dir = ""  # a folder with the idx .gz files or the .deb (skips apt-get)
    config.data.image_size = 28
    config.data.crop_padding = 0  # >0: random 28x28 crops of the image zero-padded by that much
    config.data.random_flip = False  # clothes are left-right symmetric; digits would not be

    # 3,000 x 128 = 6.4 epochs of the 60,000 train images; eval = the whole test split (79
    # batches of 128).
    train_schedule(config, 3000, 128, log_every=50, eval_every=1000)
    config.train.update(cosine_adamw(2e-3, 0.05, 0.99))

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(ONE_LAYER_SMOKE_SIZE, patch_size=7)
        train_schedule(config, 8, 32, learning_rate=3e-3, warmup_steps=1, log_every=1)
    return config
