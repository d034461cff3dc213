"""Tiny GPT causal-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny
python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny --mode=generate \
    --config.generate.prompt="ROMEO:|KING HENRY:"
"""

import ml_collections

from fmjax.experiments import (
    SMOKE_SIZE,
    causal_lm_task,
    cosine_adamw,
    generate_config,
    gpt_model,
    parse_preset,
    shakespeare_pretraining_config,
    train_schedule,
)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "gpt_tiny", smoke=False)
    optimizer = cosine_adamw(2e-3, 0.1, 0.99, warmup_steps=50, end_learning_rate_factor=0.1)
    config = shakespeare_pretraining_config(gpt_model("tiny"), causal_lm_task(), **optimizer)
    config.generate = generate_config()

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(SMOKE_SIZE)
        config.data.seq_len = 64
        train_schedule(
            config, 12, 8, checkpoint_every=6, warmup_steps=2, log_every=4, eval_batches=2
        )
        config.generate.update(max_new_tokens=8)
    return config
