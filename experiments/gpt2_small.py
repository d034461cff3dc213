"""GPT-2 small (124M): 12 layers, hidden 768, 12 heads, context 1024, vocab 50257.

Check it fits a mesh without running it:
python -m fmjax.main --config experiments/gpt2_small.py --workdir runs/gpt2_small --mode=compile
Train on GCIDE (default) or a prepared TFDS text dataset (--config.data.corpus=tfds:<name>).
"""

import ml_collections

from fmjax.config import base_config, text_corpus_fields
from fmjax.experiments import generate_config, gpt_model, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "gpt2_small")  # none: override fields with --config.*
    config = base_config()
    config.model = gpt_model("small")  # vocab 50257: see fmjax.experiments.SHAPES on padding it
    config.task = ml_collections.ConfigDict(dict(name="causal_lm"))
    config.data.update(text_corpus_fields("gcide"))
    config.data.seq_len = 1024
    config.generate = generate_config(prompt="The meaning of", max_new_tokens=128)

    # GPT-2 / nanoGPT recipe: AdamW 6e-4, linear warmup then cosine decay to 10%, wd 0.1.
    config.train.num_steps = 600_000
    config.train.batch_size = 512  # 512 x 1024 = 0.5M tokens per step
    config.train.learning_rate = 6e-4
    config.train.warmup_steps = 2000
    config.train.schedule = "cosine"
    config.train.end_learning_rate_factor = 0.1
    config.train.weight_decay = 0.1
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.95
    config.train.adam_eps = 1e-8
    config.train.grad_clip_norm = 1.0
    config.train.log_every = 50
    config.train.eval_every = 2000
    config.train.eval_batches = 20
    config.checkpoint.every_steps = 2000
    return config
