"""Self-supervised SimCLR pretraining of the vit_tiny encoder on Fashion-MNIST's train images.

python -m fmjax.main --config experiments/vit_simclr.py --workdir runs/vit_simclr
Two augmented views of every train image (random resized crop, flip, brightness / contrast
jitter), no labels; the NT-Xent loss (temperature task.temperature) pulls each view to its
partner among the 2 x batch_size views. experiments/vit_simclr_cls.py then trains a classifier
on it (linear probe or fine-tune). Eval: the loss and partner-retrieval accuracy on seeded views
of the test images. Presets: "smoke" (seconds, for tests).
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
    presets = parse_preset(preset, "vit_simclr", smoke=False)
    config = base_config()
    # vit_tiny's encoder (its parameters load into vit_tiny / vit_simclr_cls by path), with
    # SimCLR's projection head instead of a classifier.
    config.model = vit_model(
        "tiny",
        family="simclr",
        position_embedding="sincos2d",
        projection_hidden_dim=256,
        projection_dim=128,
    )
    del config.model["num_classes"]
    config.task = ml_collections.ConfigDict(dict(name="simclr", temperature=0.5))
    config.data.dataset = "fashion_mnist"
    config.data.source_dir = ""  # a folder with the idx .gz files or the .deb (skips apt-get)
    config.data.image_size = 28
    config.data.crop_area_min = 0.25  # random resized crops of 25-100% of the image's area
    config.data.jitter = 0.4  # brightness and contrast factors in [0.6, 1.4]
    config.data.worker_count = 1  # resizing two views per image: a worker process augments

    # 256 images = 512 views: 510 negatives per view; eval = the views of all 10,000 test images.
    train_schedule(config, 600, 256, log_every=25, eval_every=300)
    config.train.update(cosine_adamw(1e-3, 0.05, 0.99, warmup_steps=60))

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(ONE_LAYER_SMOKE_SIZE, patch_size=7)
        config.model.update(projection_hidden_dim=32, projection_dim=16)
        config.data.worker_count = 0
        train_schedule(config, 4, 16, learning_rate=3e-3, warmup_steps=1, log_every=1)
    return config
