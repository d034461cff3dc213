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
from fmjax.experiments import cosine_adamw, parse_preset, train_schedule, vit_model

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 90
BATCH_SIZE = 1024


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "vit_b16")  # none: override fields with --config.*
    config = base_config()
    config.model = vit_model("b16", image_size=224, num_channels=3, num_classes=1000)
    config.task = ml_collections.ConfigDict(dict(name="image_classification", label_smoothing=0.0))
    config.data.dataset = "tfds:imagenet2012"
    config.data.source_dir = ""
    config.data.image_size = 224  # Inception crop + flip (no crop_padding: Fashion-MNIST only)

    # 112,602 steps; eval = the full 50,000-image validation split. Adam b1 0.9, gradients
    # clipped at 1.0 and the decay to 0 are base_config's.
    num_steps = EPOCHS * IMAGENET_TRAIN_IMAGES // BATCH_SIZE
    train_schedule(config, num_steps, BATCH_SIZE, log_every=100, eval_every=5_000)
    config.train.update(cosine_adamw(1e-3, 0.1, 0.999, warmup_steps=10_000))
    return config
