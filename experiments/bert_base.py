"""BERT-base masked-LM pretraining (Devlin et al. 2019): 12 layers, hidden 768, 12 heads.

Corpus: GCIDE (the larger Debian corpus); `--config.data.corpus=tfds:wikipedia` for users with
a prepared TFDS wikipedia. Check the sharding on a laptop first:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m fmjax.main \
        --config experiments/bert_base.py --workdir runs/bert_base --mode=compile \
        --config.mesh.fsdp=8
"""

import ml_collections

from fmjax.config import base_config


def bert_base_model(**overrides) -> ml_collections.ConfigDict:
    """BERT-base model fields."""
    model = ml_collections.ConfigDict(
        dict(
            family="bert",
            vocab_size=30522,
            embed_dim=768,
            num_layers=12,
            num_heads=12,
            head_dim=64,
            mlp_dim=3072,
            max_seq_len=512,
            type_vocab_size=2,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            layer_norm_epsilon=1e-12,
            norm_position="post",
            compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
            attention_backend="xla",
            remat="none",
            scan_layers=False,
        )
    )
    model.update(overrides)
    return model


def bert_pretraining_config(model: ml_collections.ConfigDict, corpus: str):
    """The BERT paper's recipe (phase 1, seq 128) around a model."""
    config = base_config()
    config.model = model
    config.task = ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))
    config.data.corpus = corpus
    config.data.source_dir = ""
    config.data.seq_len = 128
    config.train.update(
        num_steps=1_000_000,
        batch_size=256,
        learning_rate=1e-4,
        warmup_steps=10_000,
        schedule="linear",
        weight_decay=0.01,
        grad_clip_norm=1.0,
        log_every=100,
        eval_every=10_000,
        eval_batches=20,
    )
    config.checkpoint.update(every_steps=5_000, keep=3)
    return config


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    if preset:
        raise ValueError(f"bert_base has no preset {preset!r}; override fields with --config.*")
    return bert_pretraining_config(bert_base_model(), "gcide")
