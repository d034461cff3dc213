"""Tiny BERT masked-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/bert_tiny
"""

import ml_collections

from fmjax.config import base_config, text_corpus_fields
from fmjax.experiments import bert_model, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_tiny", smoke=False)
    config = base_config()
    config.model = bert_model("tiny")
    config.task = ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))
    # shakespeare | gcide | tfds:<name> | files:<glob> (.txt .jsonl .jsonl.gz .parquet)
    config.data.update(text_corpus_fields("shakespeare"))
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

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(embed_dim=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
        config.train.update(num_steps=6, batch_size=8, log_every=2, eval_every=6, eval_batches=1)
        config.checkpoint.every_steps = 3
    return config
