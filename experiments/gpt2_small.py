"""GPT-2 small (124M): 12 layers, hidden 768, 12 heads, context 1024, vocab 50257.

Check it fits a mesh without running it:
python -m fmjax.main --config experiments/gpt2_small.py --workdir runs/gpt2_small --mode=compile
Train on GCIDE (default) or a prepared TFDS text dataset (--config.data.corpus=tfds:<name>).
"""

import ml_collections

from fmjax.config import base_config, text_corpus_fields
from fmjax.experiments import (
    causal_lm_task,
    cosine_adamw,
    generate_config,
    gpt_model,
    parse_preset,
    train_schedule,
)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "gpt2_small")  # none: override fields with --config.*
    config = base_config()
    config.model = gpt_model("small")  # vocab 50257: see fmjax.experiments.SHAPES on padding it
    config.task = causal_lm_task()
    config.data.update(text_corpus_fields("gcide"))
    config.data.seq_len = 1024
    config.generate = generate_config(prompt="The meaning of", max_new_tokens=128)

    # GPT-2 / nanoGPT recipe: AdamW 6e-4 (b1 0.9, b2 0.95), linear warmup then cosine decay to
    # 10%, wd 0.1, gradients clipped at 1.0; 512 x 1024 = 0.5M tokens per step.
    train_schedule(config, 600_000, 512, log_every=50, eval_every=2000, eval_batches=20)
    config.train.update(
        cosine_adamw(6e-4, 0.1, 0.95, warmup_steps=2000, end_learning_rate_factor=0.1)
    )
    return config
