"""Tiny GPT causal-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny
python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny --mode=generate \
    --config.generate.prompt="ROMEO:|KING HENRY:"
"""

import ml_collections

from fmjax.config import base_config, text_corpus_fields
from fmjax.experiments import generate_config, gpt_model, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "gpt_tiny", smoke=False)
    config = base_config()
    config.model = gpt_model("tiny")
    config.task = ml_collections.ConfigDict(dict(name="causal_lm"))
    # shakespeare | gcide | tfds:<name> | files:<glob> (.txt .jsonl .jsonl.gz .parquet)
    config.data.update(text_corpus_fields("shakespeare"))
    config.data.seq_len = 128
    config.generate = generate_config()

    config.train.num_steps = 600
    config.train.batch_size = 16
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 50
    config.train.schedule = "cosine"
    config.train.end_learning_rate_factor = 0.1
    config.train.weight_decay = 0.1
    config.train.adam_b2 = 0.99
    config.train.adam_eps = 1e-8
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.eval_batches = 16
    config.checkpoint.every_steps = 200

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(embed_dim=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
        config.data.seq_len = 64
        config.train.update(
            num_steps=12, batch_size=8, warmup_steps=2, log_every=4, eval_every=12, eval_batches=2
        )
        config.checkpoint.every_steps = 6
        config.generate.update(max_new_tokens=8)
    return config
