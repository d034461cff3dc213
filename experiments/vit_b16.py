"""ViT-B/16 at 224px on ImageNet-1k (TFDS `imagenet2012`, prepared by the user; never downloaded).

Recipe: Beyer, Zhai & Kolesnikov 2022, "Better plain ViT baselines for ImageNet-1k"
(big_vision configs/vit_i1k.py): batch 1024, 90 epochs, AdamW (b2 0.999) at lr 1e-3 with 10k
warmup steps and cosine decay, decoupled weight decay 1e-4 (= optax adamw weight_decay 0.1 at
lr 1e-3, since optax multiplies it by the learning rate), global average pooling, no dropout,
gradient clipping at 1.0, Inception crop + flip. Not reproduced here: RandAugment(2, 10),
Mixup 0.2, the sincos-2d position embedding (we learn it) and the paper's 76.5% top-1.

python -m fmjax.main --config experiments/vit_b16.py --workdir runs/vit_b16 --mode=compile
python -m fmjax.main --config experiments/vit_b16.py --workdir runs/vit_b16 \
    --config.data.data_dir=/path/with/tfds/imagenet2012
"""

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import parse_preset, vit_model

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 90


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "vit_b16")  # none: override fields with --config.*
    config = base_config()
    config.model = vit_model("b16", image_size=224, num_channels=3, num_classes=1000)
    config.task = ml_collections.ConfigDict(dict(name="image_classification", label_smoothing=0.0))
    config.data.dataset = "tfds:imagenet2012"
    config.data.source_dir = ""
    config.data.image_size = 224  # Inception crop + flip (no crop_padding: Fashion-MNIST only)

    config.train.batch_size = 1024
    config.train.num_steps = EPOCHS * IMAGENET_TRAIN_IMAGES // config.train.batch_size  # 112,602
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 10_000
    config.train.schedule = "cosine"
    config.train.end_learning_rate_factor = 0.0
    config.train.weight_decay = 0.1
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.adam_eps = 1e-8
    config.train.grad_clip_norm = 1.0
    config.train.log_every = 100
    config.train.eval_every = 5_000  # the full 50,000-image validation split
    config.checkpoint.every_steps = 5_000
    return config
