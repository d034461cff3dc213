"""Tiny BERT masked-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/bert_tiny
"""

import ml_collections

from fmjax.experiments import (
    SMOKE_SIZE,
    bert_model,
    mlm_task,
    parse_preset,
    shakespeare_pretraining_config,
    train_schedule,
)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_tiny", smoke=False)
    # Small batches, many updates: on 2 CPU cores this leaves the unigram plateau within minutes.
    config = shakespeare_pretraining_config(
        bert_model("tiny"), mlm_task(), learning_rate=1e-3, warmup_steps=60
    )
    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(SMOKE_SIZE)
        train_schedule(config, 6, 8, checkpoint_every=3, log_every=2, eval_batches=1)
    return config
