"""Fine-tune the pretrained bert_mini on Rotten Tomatoes sentiment, selecting on validation.

python -m fmjax.main --config experiments/bert_mini.py --workdir runs/bert_mini   # pretrain first
python -m fmjax.main --config experiments/bert_mini_cls.py --workdir runs/bert_mini_cls
Presets (comma-separated): "scratch" (the same model, tokenizer and budget from a random init:
what pretraining buys), "smoke" (seconds, for tests). `--config.data.train_examples=N` trains on
a subset of N labeled reviews drawn with config.seed. The trainer evaluates on a validation split
of 500 reviews carved from the train split; `python -m fmjax.tools.transfer_curve` picks the
checkpoint with the best validation accuracy and reports the test split on it.
"""

import ml_collections

from fmjax.experiments import (
    bert_model,
    from_scratch,
    parse_preset,
    smoke_classifier,
    text_classification_config,
    train_schedule,
)

PRETRAINED = "runs/bert_mini"  # the workdir of experiments/bert_mini.py


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_mini_cls", smoke=False, scratch=False)
    # The pretrained model's fields (every encoder parameter must have its shape), dropout on.
    model = bert_model(
        "mini",
        vocab_size=8192,
        max_seq_len=128,
        family="bert_classifier",
        num_classes=2,
        pooler=False,  # True: BERT's dense + tanh on [CLS] (new weights: bert_mini has no NSP)
        classifier_dropout_rate=0.1,
    )
    # Review snippets average ~26 words.
    config = text_classification_config(model, "rotten_tomatoes", 48, PRETRAINED)
    config.data.validation_examples = 500  # carved from train with a fixed seed: model selection
    config.data.train_examples = 0  # 0: every remaining labeled train review
    config.data.eval_split = "validation"  # the test split is read once, by transfer_curve

    # A short budget (2 CPU cores): 150 steps of 32, selection every 50 steps.
    train_schedule(config, 150, 32, log_every=25, eval_every=50)
    config.train.update(learning_rate=3e-4, warmup_steps=15)
    config.checkpoint.keep = 3  # every evaluated checkpoint: the selection reads one of them
    config.checkpoint.async_save = False

    if presets.scratch:
        from_scratch(config, PRETRAINED)
    if presets.smoke:  # seconds: for tests and quick checks (init_from is set by the test)
        smoke_classifier(config, eval_every=4)
        config.data.validation_examples = 64
    return config
