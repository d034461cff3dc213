"""BERT-Mini (Turc et al. 2019: 4 layers, hidden 256, 4 heads) masked-LM pretraining at seq 128 on
the modern-English mixture (kernel docs, WordNet glosses, unlabeled Rotten Tomatoes training
movies: fmjax/data/corpora/modern_english.py), a recipe for 2 CPU cores.

python -m fmjax.main --config experiments/bert_mini.py --workdir runs/bert_mini
Then fine-tune it: experiments/bert_mini_cls.py. Presets: "smoke" (seconds, for tests).
"""

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import SMOKE_SIZE, bert_model, mlm_task, parse_preset, train_schedule


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_mini", smoke=False)
    config = base_config()
    # Dropout off while pretraining (Cramming, Geiping & Goldstein 2022): well under one epoch
    # does not overfit, and dropout only slows learning. The WordPiece is trained to 8192 tokens.
    config.model = bert_model(
        "mini", vocab_size=8192, max_seq_len=128, dropout_rate=0.0, attention_dropout_rate=0.0
    )
    config.task = mlm_task()
    config.data.corpus = "modern_english"
    config.data.source_dir = ""  # an existing copy of the raw files (skips the package fetch)
    config.data.seq_len = 128

    # 3,650-4,480 tokens/s on 2 cores: 2,400 steps of 32 x 128 tokens took 40 min 41 s with
    # start-up (held-out masked-token accuracy 15.9%). Linear decay to zero, as Cramming's.
    train_schedule(config, 2400, 32, log_every=50, eval_every=400, eval_batches=16)
    config.train.update(learning_rate=1e-3, warmup_steps=120, adam_b2=0.98)

    if presets.smoke:  # seconds: for tests and quick checks
        config.model.update(SMOKE_SIZE)
        train_schedule(config, 6, 8, checkpoint_every=3, log_every=2, eval_batches=1)
    return config
