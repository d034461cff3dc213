"""Fine-tune the pretrained bert_tiny on Rotten Tomatoes sentiment (fresh vs rotten).

python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/bert_tiny   # pretrain first
python -m fmjax.main --config experiments/bert_tiny_cls.py --workdir runs/bert_tiny_cls
Presets (comma-separated): "scratch" (the same model, tokenizer and budget from a random init:
what pretraining buys), "supersense" (WordNet glosses -> 45 supersenses), "smoke" (seconds, for
tests). Eval: the whole held-out test split: accuracy, macro precision / recall / F1, confusion
matrix.
"""

import ml_collections

from fmjax.experiments import (
    bert_model,
    from_scratch,
    parse_preset,
    smoke_classifier,
    text_classification_config,
)

PRETRAINED = "runs/bert_tiny"  # the workdir of experiments/bert_tiny.py
NUM_CLASSES = {"rotten_tomatoes": 2, "wordnet_supersenses": 45}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_tiny_cls", smoke=False, scratch=False, supersense=False)
    dataset = "wordnet_supersenses" if presets.supersense else "rotten_tomatoes"

    # The pretrained model's fields: every encoder parameter must have its shape.
    model = bert_model(
        "tiny",
        family="bert_classifier",
        num_classes=NUM_CLASSES[dataset],
        pooler=False,  # True: BERT's dense + tanh on [CLS] (new weights: bert_tiny has no NSP)
        classifier_dropout_rate=0.1,
    )
    # Review snippets average ~26 words; glosses are shorter.
    config = text_classification_config(model, dataset, 64, PRETRAINED)

    # ~3 epochs of the 11,128 train reviews at batch 32; BERT's fine-tuning recipe otherwise.
    config.train.num_steps = 1000
    config.train.batch_size = 32
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.weight_decay = 0.01
    config.train.log_every = 50
    config.train.eval_every = 500  # eval = the whole test split (1,680 reviews)
    config.checkpoint.every_steps = 500

    if presets.supersense:  # 105,760 train glosses: less than one epoch
        config.train.num_steps = 2000
        config.train.eval_every = 1000  # eval = 11,899 test glosses
        config.checkpoint.every_steps = 1000
    if presets.scratch:
        from_scratch(config, PRETRAINED)
    if presets.smoke:  # seconds: for tests and quick checks (init_from is set by the test)
        smoke_classifier(config, eval_every=8)
    return config
