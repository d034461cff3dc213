"""Tiny CLIP / SigLIP on emoji images and their Unicode names (Debian `fonts-noto-color-emoji`).

python -m fmjax.main --config experiments/contrastive_tiny.py --workdir runs/contrastive_tiny
Presets (comma-separated): "siglip" (sigmoid loss, with SigLIP's temperature and bias init),
"smoke" (seconds, for tests). Eval: image->text and text->image recall@1/@5 among all held-out
pairs (chance k/N) and zero-shot accuracy over 12 keyword classes.
"""

import math

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import (
    ONE_LAYER_SMOKE_SIZE,
    cosine_adamw,
    parse_preset,
    train_schedule,
    transformer_size,
)

# (log logit scale, logit bias) at init: CLIP's temperature 0.07; SigLIP's scale 10, bias -10.
LOGIT_INITS = {"clip": (math.log(1 / 0.07), 0.0), "siglip": (math.log(10.0), -10.0)}


def contrastive_model(**overrides) -> ml_collections.ConfigDict:
    """Two-tower model fields: a ViT for 32x32 RGB images and a Transformer for captions."""
    model = ml_collections.ConfigDict(
        dict(
            family="contrastive",
            projection_dim=128,
            logit_scale_init=LOGIT_INITS["clip"][0],
            logit_bias_init=LOGIT_INITS["clip"][1],
            dropout_rate=0.1,  # 1,215 train pairs: the towers overfit without it
            attention_dropout_rate=0.0,
            layer_norm_epsilon=1e-6,
            norm_position="pre",
            compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
            attention_backend="auto",  # auto | xla | cudnn (GPU) | splash (TPU); README
            image=dict(
                image_size=32,
                patch_size=4,  # 8 x 8 = 64 patches
                num_channels=3,
                pooling="gap",
                **transformer_size(128, 4, 4, 256, 32),
            ),
            text=dict(
                vocab_size=1024,
                max_seq_len=16,
                pooling="mean",  # "mean": mean over real tokens | "cls": the [CLS] output
                **transformer_size(128, 2, 4, 256, 32),
            ),
        )
    )
    model.update(overrides)
    return model


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "contrastive_tiny", smoke=False, siglip=False)
    loss = "siglip" if presets.siglip else "clip"

    config = base_config()
    config.model = contrastive_model()
    config.model.logit_scale_init, config.model.logit_bias_init = LOGIT_INITS[loss]
    config.task = ml_collections.ConfigDict(dict(name="contrastive", loss=loss))
    config.data.dataset = "emoji"
    config.data.source_dir = ""  # a folder holding NotoColorEmoji.ttf or the .deb (skips apt)
    config.data.image_size = 32
    config.data.seq_len = 16  # [CLS] name [SEP]: the longest emoji name is 15 WordPiece tokens
    config.data.crop_padding = 2  # random 32x32 crop of the image edge-padded by 2 pixels

    # 1,215 train pairs: 19 steps of 64 an epoch; eval = all 177 held-out pairs.
    train_schedule(config, 500, 64, log_every=25, eval_every=250)
    config.train.update(cosine_adamw(1e-3, 0.1, 0.98))

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.projection_dim = 32
        for tower in (config.model.image, config.model.text):
            tower.update(ONE_LAYER_SMOKE_SIZE)
        config.model.image.patch_size = 8
        train_schedule(config, 8, 32, learning_rate=3e-3, warmup_steps=1, log_every=1)
    return config
